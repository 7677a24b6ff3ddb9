"""Reading and checking BIOMEDICA-style shard archives: sources, the archive's own sample filters, and
the `audit` stage.

A training source is open_clip's `--train-data` string: brace-expanded shard paths, several sources
joined with `::`, each with an upsampling factor (`--train-data-upsampling-factors 1::4`). `audit`
reads every shard of every source (and the held-out shards): each sample needs an image that decodes,
larger than 20 px a side, and a caption that is not empty nor the archive's "No caption found"
placeholder, and a json with the archive's article id and label field (metadata.py). The first bad
sample stops it with one line naming the shard and the key. Beside each source's shards it writes what
open_clip and the readers expect where missing: `sizes.json` (open_clip reads it to size an epoch) and
`manifest.json` (samples, bytes and SHA-256 per shard, medrepro.shards); where a manifest exists the
shards are checked against it instead.

The held-out shards must be other files than the training ones, and hold other articles: an article's
figures are not independent, so one with figures on both sides would let evaluation score what training
saw. `audit` is the stage that reads every sample, so it checks the articles and records in its report
the sources it checked and how often each training label occurs (the majority baseline); `train` and
`evaluate` refuse to run on sources that report does not describe.
"""

import io
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import braceexpand
from PIL import Image, UnidentifiedImageError

from experiments.biomedica_clip import metadata
from experiments.biomedica_clip.config import BiomedicaClipConfig, DataConfig
from medrepro import atomic, shards
from medrepro.errors import ConfigError, DataError

IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp")
MANIFEST = "manifest.json"
SIZES = "sizes.json"
REPORT = "report.json"


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


@dataclass
class Contents:
    """What `audit` reads from one side's metadata: each article with the first sample key seen from it
    (the held-out check), and how many samples carry each single label (the majority baseline)."""

    articles: dict[str, str] = field(default_factory=dict)
    labels: Counter[str] = field(default_factory=Counter)

    def add(self, key: str, article: str, label: str) -> None:
        self.articles.setdefault(article, key)
        if label:
            self.labels[label] += 1


def sample_checker(data: DataConfig, contents: Contents | None = None) -> shards.SampleCheck:
    """The archive's filters and its metadata as a `medrepro.shards` sample check: raises DataError naming
    the problem; records each sample's article and label into `contents`."""
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
        article, label = metadata.article_and_label(sample, data.label_field)
        if contents is not None:
            contents.add(key, article, label)
    return check


def audit_source(source: Source, data: DataConfig, contents: Contents) -> dict:
    """Check every sample of a source, recording articles and labels into `contents`; write sizes.json and
    manifest.json beside its shards where missing."""
    missing = [p for p in source.paths if not p.is_file()]
    if missing:
        raise DataError(f"shard {missing[0]} of {source.pattern} does not exist ({len(missing)} missing): "
                        "check the path and the brace range")
    check = sample_checker(data, contents)
    manifest_path = source.directory / MANIFEST
    if manifest_path.is_file():
        listed = {e["name"] for e in shards.read_manifest(manifest_path)["shards"]}
        absent = [p.name for p in source.paths if p.name not in listed]
        if absent:
            raise DataError(f"{manifest_path} does not list shard {absent[0]}: remove the manifest to write a "
                            "new one, or fix the shard range")
        total = shards.check_shards(manifest_path, check)
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
                            f"{counts[wrong[0]]}: delete {SIZES} and run audit again to rewrite it")
    else:
        atomic.write_json(sizes_path, counts)
        written.append(SIZES)
    return {"source": source.pattern, "factor": source.factor, "shards": len(source.paths), "samples": total,
            "written": written}


def check_disjoint_shards(train: list[Source], heldout: list[Source]) -> None:
    """Refuse a held-out shard that is also a training shard (the same file, whatever the path's spelling)."""
    training = {p.resolve() for s in train for p in s.paths}
    shared = [p for s in heldout for p in s.paths if p.resolve() in training]
    if shared:
        raise ConfigError(f"held-out shard {shared[0]} is also a training shard ({len(shared)} shared): "
                          "data.heldout must name shards that data.train does not", "data.heldout")


def check_disjoint_articles(train: Contents, heldout: Contents) -> None:
    """Refuse held-out articles that also have figures in training."""
    shared = [a for a in heldout.articles if a in train.articles]
    if shared:
        raise DataError(f"{len(shared)} held-out article(s) also have figures in the training shards, e.g. "
                        f"{shared[0]} (held-out sample {heldout.articles[shared[0]]}, training sample "
                        f"{train.articles[shared[0]]}): hold out whole articles, in shards of their own")


def audit(cfg: BiomedicaClipConfig, args: object = None) -> dict:
    """The `audit` stage: every source checked, the held-out side disjoint from training; report.json into
    <paths.audited>."""
    t0 = time.perf_counter()
    train, heldout = train_sources(cfg), heldout_sources(cfg)
    check_disjoint_shards(train, heldout)
    seen = {"train": Contents(), "heldout": Contents()}
    report = {"train": [audit_source(s, cfg.data, seen["train"]) for s in train],
              "heldout": [audit_source(s, cfg.data, seen["heldout"]) for s in heldout]}
    check_disjoint_articles(seen["train"], seen["heldout"])
    seconds = time.perf_counter() - t0
    for part in ("train", "heldout"):
        for entry in report[part]:
            print(f"audit {part}: {entry['source']}: {entry['shards']} shards, {entry['samples']} samples, "
                  f"upsampling {entry['factor']:g}" + (f"; wrote {', '.join(entry['written'])}"
                                                       if entry["written"] else ""))
    total = sum(e["samples"] for part in ("train", "heldout") for e in report[part])
    print(f"audit: {total} samples in {seconds:.1f}s, all with a decodable image, a caption and an article; "
          f"{len(seen['heldout'].articles)} held-out articles, none with figures among the "
          f"{len(seen['train'].articles)} training articles")
    report["articles"] = {"train": len(seen["train"].articles), "heldout": len(seen["heldout"].articles),
                          "shared": 0}
    report["train_labels"] = {"field": cfg.data.label_field, "counts": dict(sorted(seen["train"].labels.items()))}
    atomic.write_json(Path(cfg.paths.audited) / REPORT, report)
    return report


def audit_report(cfg: BiomedicaClipConfig) -> dict:
    """audit's report, which `train` and `evaluate` rely on: it must describe this config's sources (its
    held-out check then holds for them) and label field (its training label counts)."""
    train, heldout = train_sources(cfg), heldout_sources(cfg)
    check_disjoint_shards(train, heldout)
    path = Path(cfg.paths.audited) / REPORT
    if not path.is_file():
        raise DataError(f"{path} not found: run `medrepro biomedica_clip audit` first (it checks the shards and "
                        "that no held-out article has figures in training)")
    report = json.loads(path.read_text())
    wanted = {"train": [s.pattern for s in train], "heldout": [s.pattern for s in heldout],
              "field": cfg.data.label_field}
    found = {part: [e["source"] for e in report.get(part, [])] for part in ("train", "heldout")}
    found["field"] = report.get("train_labels", {}).get("field")
    if found != wanted:
        raise DataError(f"{path} describes other shards or another data.label_field than this config: run "
                        "`medrepro biomedica_clip audit` again")
    return report
