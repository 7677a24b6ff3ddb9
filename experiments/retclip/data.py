"""From ODIR-5K to RET-CLIP's LMDB layout, and the datasets that read it back.

prepare:   ODIR-5K (or its synthetic twin) → prepared/patients.jsonl, one patient a line with split,
           image paths, cleaned keywords, per-eye labels and the report text.
build:     patients.jsonl → lmdb/<split>/{imgs,pairs,labels}, the upstream RET-CLIP layout:
             imgs:   patient id → pickled (left, right) URL-safe base64 JPEGs, plus `num_images`
             pairs:  index → pickled (patient id, text id, text), plus `num_samples`
             labels: patient id → pickled {"left": [...], "right": [...]}, plus `num_labels`
                     (our addition: zero-shot evaluation needs per-eye labels next to the images)
             meta:   `patients_sha256` → pickled sha256 of the patients.jsonl built from, plus
                     `num_meta` (our addition: proves the three splits come from one prepare run)
           All splits are built in a temporary sibling of lmdb/ and swapped in together, so an
           interrupted build leaves the previous complete LMDB, never a new train split beside old
           valid and test splits.
"""

import base64
import io
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from tqdm import tqdm

from experiments.retclip import odir
from experiments.retclip.odir import SPLITS
from experiments.retclip.prompts import Prompts, report_text
from medrepro import atomic, repro
from medrepro.errors import DataError
from medrepro.lmdb_store import LmdbTable, write_table

BUILD_HINT = "`medrepro retclip build-lmdb`"
FINGERPRINT_KEY = "patients_sha256"


@dataclass(frozen=True)
class Record:
    """One patient as the later stages need it; a line of patients.jsonl."""

    id: int
    split: str
    left_image: str
    right_image: str
    left_keywords: list[str]
    right_keywords: list[str]
    left_labels: list[str]
    right_labels: list[str]
    patient_labels: list[str]
    text: str


def make_records(splits: dict[str, list[odir.Patient]], prompts: Prompts) -> list[Record]:
    records = []
    for split in SPLITS:
        for p in splits[split]:
            records.append(Record(
                id=p.id, split=split, left_image=str(p.left_image), right_image=str(p.right_image),
                left_keywords=list(p.left_keywords), right_keywords=list(p.right_keywords),
                left_labels=list(p.left_labels), right_labels=list(p.right_labels),
                patient_labels=list(p.patient_labels),
                text=report_text(prompts, p.left_keywords, p.right_keywords),
            ))
    return records


def write_records(path: Path, records: list[Record]) -> None:
    atomic.write_text(path, "".join(json.dumps(asdict(r), sort_keys=True) + "\n" for r in records))


def read_records(path: Path) -> list[Record]:
    if not path.is_file():
        raise DataError(f"{path} not found: run `medrepro retclip prepare` first")
    records = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            records.append(Record(**json.loads(line)))
        except (json.JSONDecodeError, TypeError) as e:
            raise DataError(f"{path}:{line_no}: malformed patient record ({e}); re-run prepare") from None
    return records


# ----------------------------------------------------------------------------------------------- LMDB


def encode_eye(path: str, size: int, quality: int) -> str:
    """Centre-crop to a square, resize to `size`, re-encode as JPEG, URL-safe base64."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"cannot read fundus image {path}: {e}; replace the file or drop the patient") from None
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return base64.urlsafe_b64encode(buffer.getvalue()).decode("ascii")


def _encode_pair(job: tuple[str, str, int, int]) -> tuple[str, str]:
    left, right, size, quality = job
    return encode_eye(left, size, quality), encode_eye(right, size, quality)


def _check_image_record(key: str, value: Any) -> None:
    if not (isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise ValueError("expected a (left, right) tuple of base64 strings")
    for b64 in value:
        if not base64.urlsafe_b64decode(b64[:8]).startswith(b"\xff\xd8"):
            raise ValueError("not a base64 JPEG")


def _check_pair_record(key: str, value: Any) -> None:
    if not (isinstance(value, tuple) and len(value) == 3 and isinstance(value[2], str)):
        raise ValueError("expected a (patient id, text id, text) tuple")


def _check_label_record(key: str, value: Any) -> None:
    if not (isinstance(value, dict) and set(value) == {"left", "right"}
            and all(set(v) <= set(odir.CLASSES) for v in value.values())):
        raise ValueError(f"expected {{'left': [...], 'right': [...]}} with labels from {odir.CLASSES}")


def _check_meta_record(key: str, value: Any) -> None:
    if key != FINGERPRINT_KEY or not (isinstance(value, str) and len(value) == 64):
        raise ValueError(f"expected only '{FINGERPRINT_KEY}' → a sha256 hex digest")


def prepared_fingerprint(patients: Path) -> str:
    """What every split records of the prepared data it was built from: the sha256 of patients.jsonl."""
    return repro.sha256_file(patients)


def build_lmdb(records: list[Record], out_dir: Path, size: int, quality: int, fingerprint: str,
               workers: int = 4) -> dict[str, int]:
    """Write lmdb/<split>/{imgs,pairs,labels,meta} for every split, all or nothing; returns patients per split.

    `fingerprint` is `prepared_fingerprint` of the patients.jsonl that `records` come from.
    """
    counts = {}
    with atomic.atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            rows = [r for r in records if r.split == split]
            jobs = [(r.left_image, r.right_image, size, quality) for r in rows]
            with ProcessPoolExecutor(max_workers=workers) as pool:
                encoded = list(tqdm(pool.map(_encode_pair, jobs, chunksize=16), total=len(jobs),
                                    desc=f"lmdb {split}", disable=None))
            split_dir = tmp / split
            write_table(split_dir / "imgs", ((str(r.id), pair) for r, pair in zip(rows, encoded, strict=True)),
                        "num_images", _check_image_record)
            write_table(split_dir / "pairs", ((str(i), (r.id, i, r.text)) for i, r in enumerate(rows)),
                        "num_samples", _check_pair_record)
            write_table(split_dir / "labels", ((str(r.id), {"left": r.left_labels, "right": r.right_labels})
                                               for r in rows), "num_labels", _check_label_record)
            write_table(split_dir / "meta", [(FINGERPRINT_KEY, fingerprint)], "num_meta", _check_meta_record)
            counts[split] = len(rows)
    return counts


def open_split(split_dir: Path) -> tuple[LmdbTable, LmdbTable, LmdbTable]:
    """The imgs, pairs and labels tables of one split, once all splits beside it prove one prepare run."""
    _check_fingerprints(split_dir.parent)
    return (LmdbTable(split_dir / "imgs", "num_images", _check_image_record, hint=BUILD_HINT),
            LmdbTable(split_dir / "pairs", "num_samples", _check_pair_record, hint=BUILD_HINT),
            LmdbTable(split_dir / "labels", "num_labels", _check_label_record, hint=BUILD_HINT))


def _check_fingerprints(lmdb_dir: Path) -> None:
    # Training on one prepare run's train split and evaluating on another's test split could leak
    # patients across splits without any error, so a mixed LMDB is refused outright.
    found = {split: LmdbTable(lmdb_dir / split / "meta", "num_meta", _check_meta_record, hint=BUILD_HINT)
             .get(FINGERPRINT_KEY) for split in SPLITS}
    if len(set(found.values())) > 1:
        seen = ", ".join(f"{split} {digest[:12]}" for split, digest in found.items())
        raise DataError(f"the LMDB splits under {lmdb_dir} come from different prepare runs (patients.jsonl "
                        f"sha256 {seen}); re-run {BUILD_HINT}")


def decode_eye(b64: str, where: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(base64.urlsafe_b64decode(b64))).convert("RGB")
    except (OSError, ValueError, UnidentifiedImageError) as e:
        raise DataError(f"corrupt JPEG in {where}: {e}; rebuild with {BUILD_HINT}") from None


# ------------------------------------------------------------------------------------------- datasets


class PairDataset(Dataset):
    """Training pairs: (left image, right image, report tokens)."""

    def __init__(self, split_dir: Path, transform: Callable, tokenizer: Callable):
        self.imgs, self.pairs, _ = open_split(split_dir)
        self.transform, self.tokenizer = transform, tokenizer

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        patient, _, text = self.pairs.get(str(index))
        left, right = self.imgs.get(str(patient))
        where = f"{self.imgs.path} record {patient}"
        return (self.transform(decode_eye(left, where)), self.transform(decode_eye(right, where)),
                self.tokenizer([text])[0])


@dataclass(frozen=True)
class Eye:
    patient: int
    side: str
    label: int


def single_label_eyes(labels: LmdbTable) -> Iterator[Eye]:
    """The eyes with exactly one ODIR class: the single-label zero-shot protocol's test set."""
    for key in sorted(labels.keys(), key=int):
        record = labels.get(key)
        for side in ("left", "right"):
            if len(record[side]) == 1:
                yield Eye(int(key), side, odir.CLASSES.index(record[side][0]))


class EyeDataset(Dataset):
    """Evaluation eyes: (image, label index), for one side at a time."""

    def __init__(self, split_dir: Path, transform: Callable, side: str):
        self.imgs, _, labels = open_split(split_dir)
        self.eyes = [e for e in single_label_eyes(labels) if e.side == side]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.eyes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        eye = self.eyes[index]
        left, right = self.imgs.get(str(eye.patient))
        image = decode_eye(left if eye.side == "left" else right, f"{self.imgs.path} record {eye.patient}")
        return self.transform(image), eye.label


class PatientDataset(Dataset):
    """Evaluation patients: (left image, right image, label index) for every patient whose labels, as
    implied by both eyes' keywords, are exactly one class."""

    def __init__(self, split_dir: Path, transform: Callable):
        self.imgs, _, labels = open_split(split_dir)
        self.n_patients = len(labels)
        self.patients = []
        for key in sorted(labels.keys(), key=int):
            record = labels.get(key)
            implied = odir.patient_labels_from_eyes(record["left"], record["right"])
            if len(implied) == 1:
                self.patients.append((int(key), odir.CLASSES.index(implied[0])))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.patients)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        patient, label = self.patients[index]
        left, right = self.imgs.get(str(patient))
        where = f"{self.imgs.path} record {patient}"
        return self.transform(decode_eye(left, where)), self.transform(decode_eye(right, where)), label
