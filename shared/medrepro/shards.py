"""WebDataset shards: a manifest of their samples, sizes and SHA-256 digests, and a check against it.

A shard is a tar file in which consecutive members sharing a key (the member name up to the first dot
of its basename, as webdataset groups them) form one sample. The manifest is one JSON file beside the
shards: per shard its name (relative to the manifest), sample count, byte size and SHA-256, plus
whatever the writer adds (`extra`: shape, dtype, preprocessing, source). `check_shards` re-reads every
shard and fails with one line naming the shard and, where it can, the sample: a missing file, a size
or digest that differs, a tar that ends early, or a sample that the caller's check rejects.

`check_shard_count` guards the streaming readers: webdataset hands whole shards to each rank and each
loader worker, so with fewer shards than ranks × workers some of them get none and DDP hangs waiting
for their batches.
"""

import hashlib
import json
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from medrepro import atomic
from medrepro.errors import ConfigError, DataError

SampleCheck = Callable[[str, dict[str, bytes]], None]

MANIFEST_VERSION = 1
_CHUNK = 1 << 20
# webdataset's split of a member name into sample key and field: up to the first dot of the basename.
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def iter_samples(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield (key, {field: bytes}) for each sample of a shard, in order; DataError if the tar is damaged."""
    path = Path(path)
    key, sample = None, {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                match = _KEY_EXT.match(member.name)
                if match is None:
                    raise DataError(f"{path}: member {member.name!r} has no '.field' suffix; "
                                    "it is not a WebDataset shard")
                member_key, ext = match.groups()
                if member_key != key:
                    if key is not None:
                        yield key, sample
                    key, sample = member_key, {}
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    raise tarfile.ReadError("unexpected end of data")
                sample[ext] = data
    except (tarfile.TarError, EOFError, OSError) as e:
        after = f"after sample {key}" if key is not None else "before its first sample"
        raise DataError(f"shard {path} is truncated or corrupt {after} ({e}): rewrite it") from None
    if key is not None:
        yield key, sample


def write_manifest(shard_paths: Sequence[str | Path], out_path: str | Path, extra: dict[str, Any]) -> dict:
    """Count, size and hash each shard, write the manifest atomically to `out_path` and return it.

    Shard names are stored relative to the manifest's directory, so shards and manifest move together.
    """
    out_path = Path(out_path)
    shards = []
    for shard in map(Path, shard_paths):
        if not shard.is_file():
            raise DataError(f"shard {shard} does not exist: write the shards before their manifest")
        shards.append({
            "name": str(shard.resolve().relative_to(out_path.parent.resolve())),
            "samples": sum(1 for _ in iter_samples(shard)),
            "bytes": shard.stat().st_size,
            "sha256": sha256_file(shard),
        })
    reserved = {"version", "shards", "samples", "bytes"} & set(extra)
    if reserved:
        raise ValueError(f"manifest extra keys {sorted(reserved)} are reserved")
    manifest = {
        **extra,
        "version": MANIFEST_VERSION,
        "samples": sum(s["samples"] for s in shards),
        "bytes": sum(s["bytes"] for s in shards),
        "shards": shards,
    }
    atomic.write_json(out_path, manifest)
    return manifest


def read_manifest(path: str | Path) -> dict:
    """The manifest at `path`, checked for the fields `check_shards` and readers rely on."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"shard manifest {path} does not exist: write the shards first") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"shard manifest {path} is unreadable ({e}): rewrite the shards") from None
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
        raise DataError(f"shard manifest {path} is not a version-{MANIFEST_VERSION} manifest: rewrite the shards")
    shards = manifest.get("shards")
    fields = {"name": str, "samples": int, "bytes": int, "sha256": str}
    if not isinstance(shards, list) or not all(
            isinstance(s, dict) and all(isinstance(s.get(k), t) for k, t in fields.items()) for s in shards):
        raise DataError(f"shard manifest {path}: 'shards' must list objects with {', '.join(fields)}")
    return manifest


def check_shards(manifest_path: str | Path, check_sample: SampleCheck | None = None) -> int:
    """Check every shard of a manifest; return the number of samples checked.

    Per shard: it exists, its samples decode from the tar and pass `check_sample(key, sample)` (which
    raises DataError or ValueError to reject one), their count, byte size and SHA-256 match the
    manifest. The first failure raises DataError naming the shard and, for a sample, its key.
    """
    manifest_path = Path(manifest_path)
    manifest = read_manifest(manifest_path)
    total = 0
    for entry in manifest["shards"]:
        shard = manifest_path.parent / entry["name"]
        if not shard.is_file():
            raise DataError(f"shard {shard} listed in {manifest_path} is missing: copy it again or rewrite the shards")
        count = 0
        for key, sample in iter_samples(shard):
            if check_sample is not None:
                try:
                    check_sample(key, sample)
                except (DataError, ValueError) as e:
                    raise DataError(f"shard {shard}, sample {key}: {e}") from None
            count += 1
        if count != entry["samples"]:
            raise DataError(f"shard {shard} holds {count} samples, the manifest {entry['samples']}: rewrite it")
        size = shard.stat().st_size
        if size != entry["bytes"]:
            raise DataError(f"shard {shard} is {size} bytes, the manifest {entry['bytes']}: "
                            "it is truncated or was changed; rewrite it")
        if sha256_file(shard) != entry["sha256"]:
            raise DataError(f"shard {shard}: SHA-256 differs from {manifest_path}; it is corrupt, rewrite it")
        total += count
    return total


def check_shard_count(n_shards: int, world_size: int, workers: int) -> None:
    """Refuse a streaming setup in which some rank's loader worker would get no shard at all."""
    readers = world_size * max(workers, 1)
    if n_shards < readers:
        raise ConfigError(f"{n_shards} shards cannot feed {world_size} processes × {max(workers, 1)} loader "
                          f"workers (each reads whole shards and needs at least one): write at least {readers} "
                          "shards (fewer samples per shard) or lower the number of processes or workers")
