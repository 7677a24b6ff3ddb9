"""Reading and checking BIOMEDICA-style shard archives: sources, the archive's own sample filters, and
the `verify` stage.

A training source is open_clip's `--train-data` string: brace-expanded shard paths, several sources
joined with `::`, each with an upsampling factor (`--train-data-upsampling-factors 1::4`). `verify`
reads every shard of every source (and the held-out shards): each sample needs an image that decodes,
larger than 20 px a side, and a caption that is not empty nor the archive's "No caption found"
placeholder. The first bad sample stops it with one line naming the shard and the key. Beside each
source's shards it writes what open_clip and the readers expect where missing: `sizes.json` (open_clip
reads it to size an epoch) and `manifest.json` (samples, bytes and SHA-256 per shard, medrepro.shards);
where a manifest exists the shards are checked against it instead.
"""

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import braceexpand
from PIL import Image, UnidentifiedImageError

from experiments.biomedica_clip.config import BiomedicaClipConfig, DataConfig
from medrepro import atomic, shards
from medrepro.errors import ConfigError, DataError

IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp")
MANIFEST = "manifest.json"
SIZES = "sizes.json"


@dataclass(frozen=True)
class Source:
    pattern: str
    factor: float
    paths: tuple[Path, ...]

    @property
    def directory(self) -> Path:
        return self.paths[0].parent


def parse_sources(spec: str, upsampling: str = "", what: str = "data.train") -> list[Source]:
    """`a/{000..009}.tar::b/{000..003}.tar` (+ `1::4`) → one Source per `::` part, paths expanded."""
    patterns = spec.split("::")
    if not spec or not all(patterns):
        raise ConfigError(f"{what} is empty or has an empty `::` part: give shard paths such as "
                          "/data/biomedica/{000000..000099}.tar", what)
    factors = [1.0] * len(patterns)
    if upsampling:
        try:
            factors = [float(f) for f in upsampling.split("::")]
        except ValueError:
            raise ConfigError(f"data.upsampling {upsampling!r} must be numbers joined with `::`",
                              "data.upsampling") from None
        if len(factors) != len(patterns) or min(factors) <= 0:
            raise ConfigError(f"data.upsampling {upsampling!r} needs one positive factor per source of {what} "
                              f"({len(patterns)})", "data.upsampling")
    sources = []
    for pattern, factor in zip(patterns, factors, strict=True):
        paths = tuple(Path(p) for p in braceexpand.braceexpand(pattern))
        if len({p.parent for p in paths}) != 1:
            raise ConfigError(f"{what}: the shards of source {pattern!r} lie in several directories; open_clip "
                              "reads one sizes.json per source directory, so split it into `::` sources", what)
        sources.append(Source(pattern, factor, paths))
    return sources


def _synthetic_source(directory: Path) -> Source:
    paths = tuple(sorted(directory.glob("*.tar")))
    if not paths:
        raise DataError(f"no shards in {directory}: run `medrepro biomedica_clip prepare` first")
    pattern = paths[0] if len(paths) == 1 else directory / f"{{{paths[0].stem}..{paths[-1].stem}}}.tar"
    return Source(str(pattern), 1.0, paths)


def train_sources(cfg: BiomedicaClipConfig) -> list[Source]:
    if cfg.data.source == "synthetic":
        return [_synthetic_source(Path(cfg.paths.prepared) / "train")]
    return parse_sources(cfg.data.train, cfg.data.upsampling)


def heldout_sources(cfg: BiomedicaClipConfig) -> list[Source]:
    if cfg.data.source == "synthetic":
        return [_synthetic_source(Path(cfg.paths.prepared) / "heldout")]
    return parse_sources(cfg.data.heldout, what="data.heldout")


def sample_checker(data: DataConfig) -> shards.SampleCheck:
    """The archive's filters as a `medrepro.shards` sample check: raises DataError naming the problem."""
    bad_captions = {c.strip() for c in data.bad_captions}

    def check(key: str, sample: dict[str, bytes]) -> None:
        image_field = next((f for f in IMAGE_FIELDS if f in sample), None)
        if image_field is None:
            raise DataError(f"no image (fields: {', '.join(sorted(sample)) or 'none'}); open_clip skips it silently")
        if "txt" not in sample:
            raise DataError("no caption (txt); open_clip skips it silently")
        try:
            caption = sample["txt"].decode("utf-8").strip()
        except UnicodeDecodeError:
            raise DataError("the caption is not UTF-8") from None
        if caption in bad_captions:
            raise DataError(f"caption {caption!r} is one the archive filters out (data.bad_captions)")
        try:
            with Image.open(io.BytesIO(sample[image_field])) as image:
                image.load()
                width, height = image.size
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise DataError(f"the {image_field} does not decode ({e})") from None
        if min(width, height) < data.min_image_side:
            raise DataError(f"the image is {width}x{height} px; the archive drops images of "
                            f"{data.min_image_side - 1} px or less a side")
    return check


def verify_source(source: Source, data: DataConfig) -> dict:
    """Check every sample of a source; write sizes.json and manifest.json beside its shards where missing."""
    missing = [p for p in source.paths if not p.is_file()]
    if missing:
        raise DataError(f"shard {missing[0]} of {source.pattern} does not exist ({len(missing)} missing): "
                        "check the path and the brace range")
    check = sample_checker(data)
    manifest_path = source.directory / MANIFEST
    if manifest_path.is_file():
        listed = {e["name"] for e in shards.read_manifest(manifest_path)["shards"]}
        absent = [p.name for p in source.paths if p.name not in listed]
        if absent:
            raise DataError(f"{manifest_path} does not list shard {absent[0]}: remove the manifest to write a "
                            "new one, or fix the shard range")
        total = shards.verify_shards(manifest_path, check)
        written = []
    else:
        for path in source.paths:
            for key, sample in shards.iter_samples(path):
                try:
                    check(key, sample)
                except DataError as e:
                    raise DataError(f"shard {path}, sample {key}: {e}") from None
        total = shards.write_manifest(source.paths, manifest_path, {"source": source.pattern})["samples"]
        written = [MANIFEST]
    manifest = shards.read_manifest(manifest_path)
    counts = {Path(e["name"]).name: e["samples"] for e in manifest["shards"]}
    sizes_path = source.directory / SIZES
    if sizes_path.is_file():
        sizes = json.loads(sizes_path.read_text())
        wrong = [p.name for p in source.paths if sizes.get(p.name) != counts[p.name]]
        if wrong:
            raise DataError(f"{sizes_path} says {sizes.get(wrong[0])} samples for {wrong[0]}, the shard holds "
                            f"{counts[wrong[0]]}: delete {SIZES} and run verify again to rewrite it")
    else:
        atomic.write_json(sizes_path, counts)
        written.append(SIZES)
    return {"source": source.pattern, "factor": source.factor, "shards": len(source.paths), "samples": total,
            "written": written}


def verify(cfg: BiomedicaClipConfig, args: object = None) -> dict:
    """The `verify` stage: every source checked; report.json into <paths.verified>."""
    t0 = time.perf_counter()
    report = {"train": [verify_source(s, cfg.data) for s in train_sources(cfg)],
              "heldout": [verify_source(s, cfg.data) for s in heldout_sources(cfg)]}
    seconds = time.perf_counter() - t0
    for part in ("train", "heldout"):
        for entry in report[part]:
            print(f"verify {part}: {entry['source']}: {entry['shards']} shards, {entry['samples']} samples, "
                  f"upsampling {entry['factor']:g}" + (f"; wrote {', '.join(entry['written'])}"
                                                       if entry["written"] else ""))
    total = sum(e["samples"] for part in report.values() for e in part)
    print(f"verify: {total} samples in {seconds:.1f}s, all with a decodable image and a caption")
    atomic.write_json(Path(cfg.paths.verified) / "report.json", report)
    return report
