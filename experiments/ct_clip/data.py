"""The samples inside the shards, and a map-style view over the shards for training and evaluation.

A sample is four tar members sharing the volume's name as key:
    KEY.npy          the preprocessed volume, float16 (slices, rows, columns), NumPy's .npy format
    KEY.txt          the report text the model trains on (`data.report_fields`, joined)
    KEY.labels.json  the 18 labels as 0/1, in `ctrate.LABELS` order
    KEY.json         where it came from: release, whether the CSV rescale was applied, source spacing/shape

`ShardDataset` indexes every member's byte offset once (from the tar headers of the shards listed in
the manifest), so that item i is one seek and one read: the shared trainer's StepBatchSampler then
draws batches from it as from any map-style dataset, which gives exact resume and equal batch counts
on every rank (see the README, "Shards and ranks").
"""

import copy
import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from experiments.ct_clip.ctrate import LABELS
from medrepro.errors import DataError
from medrepro.shards import read_manifest

FIELDS = ("npy", "txt", "labels.json", "json")
# Enough for any .npy header NumPy writes for a plain array (magic, length, dict, padding).
NPY_HEADER_MAX = 1 << 16


def encode_sample(key: str, volume: np.ndarray, text: str, labels: tuple[int, ...], meta: dict) -> dict:
    """A webdataset sample dict (bytes per field) for ShardWriter."""
    buffer = io.BytesIO()
    np.save(buffer, volume, allow_pickle=False)
    return {"__key__": key, "npy": buffer.getvalue(), "txt": text.encode("utf-8"),
            "labels.json": json.dumps(list(labels)).encode("utf-8"),
            "json": json.dumps(meta, sort_keys=True).encode("utf-8")}


def _npy(data: bytes | memoryview) -> np.ndarray:
    """An .npy array viewing `data` (no copy: the volume is most of a sample's bytes)."""
    header = io.BytesIO(bytes(data[:NPY_HEADER_MAX]))
    version = np.lib.format.read_magic(header)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(header)
    if dtype.hasobject:
        raise ValueError("object arrays are not volumes")
    volume = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=header.tell())
    return volume.reshape(shape, order="F" if fortran else "C")


@dataclass
class Sample:
    key: str
    volume: np.ndarray
    text: str
    labels: np.ndarray
    meta: dict


def decode_sample(key: str, fields: dict[str, bytes], shape: tuple[int, ...] | None = None) -> Sample:
    """Decode and check one sample; ValueError says what is wrong with it."""
    missing = [f for f in FIELDS if f not in fields]
    if missing:
        raise ValueError(f"no {', '.join(missing)} member")
    try:
        volume = _npy(fields["npy"])
        labels = np.asarray(json.loads(fields["labels.json"]))
        meta = json.loads(fields["json"])
        text = fields["txt"].decode("utf-8")
    except (ValueError, EOFError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot be decoded ({e})") from None
    if volume.dtype != np.float16 or (shape is not None and volume.shape != tuple(shape)):
        raise ValueError(f"volume is {volume.dtype} {volume.shape}, expected float16 {tuple(shape or ())}")
    if labels.shape != (len(LABELS),) or not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be {len(LABELS)} values of 0 or 1, got {labels.tolist()}")
    return Sample(key, volume, text, labels.astype(np.int64), meta)


def _member_index(shard: Path) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """(key, {field: (offset, size)}) per sample, from the tar headers alone."""
    samples: list[tuple[str, dict[str, tuple[int, int]]]] = []
    try:
        with tarfile.open(shard, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, field = member.name.partition(".")
                if not samples or samples[-1][0] != key:
                    samples.append((key, {}))
                samples[-1][1][field] = (member.offset_data, member.size)
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"shard {shard} cannot be indexed ({e}): run `medrepro ct_clip check-shards` and rewrite "
                        "the shards") from None
    return samples


def _read_into(path: Path, start: int, view: memoryview) -> int:
    """Bytes of `path` from `start` read into `view` (fewer only at the end of the file)."""
    filled = 0
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        while filled < len(view):
            got = f.readinto(view[filled:])
            if not got:
                break
            filled += got
    return filled


class ShardDataset(Dataset):
    """Item i → (volume (1, D, H, W) float32, report text, labels (18,) int64), in manifest order.

    `limit` keeps the first `limit` samples.
    """

    def __init__(self, manifest_path: str | Path, limit: int | None = None):
        self.manifest_path = manifest_path = Path(manifest_path)
        manifest = read_manifest(manifest_path)
        self.shape = tuple(manifest["shape"])
        self.items: list[tuple[Path, str, dict[str, tuple[int, int]]]] = []
        for entry in manifest["shards"]:
            shard = manifest_path.parent / entry["name"]
            index = _member_index(shard)
            if len(index) != entry["samples"]:
                raise DataError(f"shard {shard} holds {len(index)} samples, its manifest {entry['samples']}: "
                                "rewrite the shards")
            self.items += [(shard, key, fields) for key, fields in index]
            if limit is not None and len(self.items) >= limit:
                break
        self.items = self.items[:limit]
        self._buffer: bytearray | None = None

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, keep: Callable[[str], bool]) -> "ShardDataset":
        """The samples whose key `keep` accepts, in the same order."""
        view = copy.copy(self)
        view.items = [item for item in self.items if keep(item[1])]
        return view

    def sample(self, i: int) -> Sample:
        """Sample i, checked. Its volume views a read buffer that the next call reuses (a fresh 14 MB
        buffer per sample costs a quarter of the read rate in page faults): copy it to keep it."""
        shard, key, offsets = self.items[i]
        # A sample's members are contiguous in the tar: one read covers them all.
        start = min(offset for offset, _ in offsets.values())
        end = max(offset + size for offset, size in offsets.values())
        if self._buffer is None or len(self._buffer) < end - start:
            self._buffer = bytearray(end - start)
        view = memoryview(self._buffer)[:end - start]
        if _read_into(shard, start, view) != end - start:
            raise DataError(f"shard {shard}, sample {key}: truncated; rewrite the shards")
        fields = {field: view[offset - start:offset - start + size] for field, (offset, size) in offsets.items()}
        fields = {field: data if field == "npy" else bytes(data) for field, data in fields.items()}
        try:
            return decode_sample(key, fields, self.shape)
        except ValueError as e:
            raise DataError(f"shard {shard}, sample {key}: {e}") from None

    def __getstate__(self) -> dict:
        # Loader workers started by pickling get their own buffer, not a copy of this one.
        return {**self.__dict__, "_buffer": None}

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, torch.Tensor]:
        s = self.sample(i)
        return torch.from_numpy(s.volume.astype(np.float32))[None], s.text, torch.from_numpy(s.labels)
