"""Reader for ODIR-5K: the original release (xlsx sheet) and the Kaggle variant (full_df.csv).

The sheet labels patients, not eyes; RET-CLIP also needs per-eye labels, which are derived here
from each eye's diagnostic keywords. Every problem a user can fix raises `DataError`.
"""

import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medrepro.errors import DataError

CLASSES: tuple[str, ...] = ("N", "D", "G", "C", "A", "H", "M", "O")
CLASS_NAMES: dict[str, str] = {
    "N": "normal",
    "D": "diabetes / diabetic retinopathy",
    "G": "glaucoma",
    "C": "cataract",
    "A": "age-related macular degeneration",
    "H": "hypertension / hypertensive retinopathy",
    "M": "pathological myopia",
    "O": "other abnormalities",
}

ANNOTATION_NAME = "ODIR-5K_Training_Annotations(Updated)_V2.xlsx"
IMAGES_DIR_NAME = "Training Images"
KAGGLE_CSV_NAME = "full_df.csv"
KAGGLE_IMAGES_DIR_NAME = "preprocessed_images"

COLUMNS: tuple[str, ...] = (
    "ID",
    "Patient Age",
    "Patient Sex",
    "Left-Fundus",
    "Right-Fundus",
    "Left-Diagnostic Keywords",
    "Right-Diagnostic Keywords",
    *CLASSES,
)
# The Kaggle csv names the images it actually ships in `filename`, one row per image.
KAGGLE_COLUMNS: tuple[str, ...] = (*COLUMNS, "filename")

# Keywords that describe the photograph rather than the eye. Matched as substrings of a cleaned
# keyword, so "severely low image quality" and both spellings of disc/disk are caught.
QUALITY_KEYWORDS: tuple[str, ...] = (
    "lens dust",
    "low image quality",
    "image offset",
    "optic disk photographically invisible",
    "optic disc photographically invisible",
    "anterior segment image",
    "no fundus image",
)

# First match wins; the order matters only for keywords naming two conditions.
_CLASS_PHRASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("N", ("normal fundus",)),
    # "proliferative retinopathy" also covers "non proliferative" and "nonproliferative".
    ("D", ("diabetic retinopathy", "proliferative retinopathy")),
    ("G", ("glaucoma",)),
    ("C", ("cataract",)),
    ("A", ("age-related macular degeneration", "age related macular degeneration")),
    ("H", ("hypertensive",)),
    ("M", ("pathological myopia", "myopia retinopathy", "myopic")),
)

SPLITS: tuple[str, ...] = ("train", "valid", "test")

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Patient:
    """One ODIR patient. Keywords are cleaned (lowercase, quality keywords dropped); label tuples
    follow CLASSES order. An eye with empty labels had no usable keyword."""

    id: int
    age: int
    sex: str
    left_image: Path
    right_image: Path
    left_keywords: tuple[str, ...]
    right_keywords: tuple[str, ...]
    left_labels: tuple[str, ...]
    right_labels: tuple[str, ...]
    patient_labels: tuple[str, ...]


def split_keywords(cell: str) -> tuple[str, ...]:
    """Split one keyword cell on the full-width comma (or an ASCII one) and normalise each part."""
    parts = cell.replace(",", "，").split("，")
    return tuple(cleaned for part in parts if (cleaned := " ".join(part.lower().split())))


def is_quality_keyword(keyword: str) -> bool:
    return any(quality in keyword.lower() for quality in QUALITY_KEYWORDS)


def keyword_class(keyword: str) -> str:
    """Map one cleaned, non-quality keyword to its class.

    "normal fundus" → N; "diabetic retinopathy" or "(non)proliferative retinopathy" → D;
    "glaucoma" → G; "cataract" → C; "age-related macular degeneration" → A; "hypertensive" → H;
    "pathological myopia", "myopia retinopathy" or "myopic" → M; anything else → O.
    """
    if is_quality_keyword(keyword):
        raise ValueError(f"{keyword!r} describes image quality and has no class; drop it first")
    for label, phrases in _CLASS_PHRASES:
        if any(phrase in keyword for phrase in phrases):
            return label
    return "O"


def sort_labels(labels: Iterable[str]) -> tuple[str, ...]:
    present = set(labels)
    return tuple(label for label in CLASSES if label in present)


def eye_labels(keywords: Iterable[str]) -> tuple[str, ...]:
    """Labels of one eye from its cleaned, quality-free keywords."""
    return sort_labels(keyword_class(keyword) for keyword in keywords)


def patient_labels_from_eyes(left: Iterable[str], right: Iterable[str]) -> tuple[str, ...]:
    """The sheet's patient labels implied by the per-eye labels: their union, except that the sheet
    marks a patient normal (N) only when no eye shows any disease."""
    union = set(left) | set(right)
    if union - {"N"}:
        union.discard("N")
    return sort_labels(union)


def find_odir(root: Path) -> tuple[Path, Path]:
    """Return (annotation file, images dir) for the original layout (in `root` or `root/ODIR-5K`)
    or the Kaggle layout (`full_df.csv` with `preprocessed_images/`)."""
    root = Path(root)
    layouts = (
        (root / ANNOTATION_NAME, root / IMAGES_DIR_NAME),
        (root / "ODIR-5K" / ANNOTATION_NAME, root / "ODIR-5K" / IMAGES_DIR_NAME),
        (root / KAGGLE_CSV_NAME, root / KAGGLE_IMAGES_DIR_NAME),
    )
    for annotation, images in layouts:
        if annotation.is_file() and images.is_dir():
            return annotation, images
    raise DataError(
        f"no ODIR-5K dataset under {root}: expected '{ANNOTATION_NAME}' with '{IMAGES_DIR_NAME}/' "
        f"(in it or in its ODIR-5K/ folder) or the Kaggle '{KAGGLE_CSV_NAME}' with "
        f"'{KAGGLE_IMAGES_DIR_NAME}/'; point the root at the unpacked archive"
    )


def read_odir(root: Path) -> list[Patient]:
    """Read and check every patient of the dataset under `root`, sorted by id."""
    annotation, images_dir = find_odir(root)
    kaggle = annotation.suffix == ".csv"
    table = _read_table(annotation)
    # Stray spaces around a header are invisible in a spreadsheet; they should not fail a run.
    table.columns = [str(column).strip() for column in table.columns]
    required = KAGGLE_COLUMNS if kaggle else COLUMNS
    missing = [column for column in required if column not in table]
    if missing:
        raise DataError(
            f"column '{missing[0]}' is missing from {annotation} (missing: {', '.join(missing)}); "
            f"the file needs the columns {', '.join(required)}"
        )
    table = _one_row_per_patient(table, annotation) if kaggle else table
    rows = table[list(COLUMNS)].to_dict("records")
    patients = [_patient(row, int(index) + 2, annotation, images_dir)
                for index, row in zip(table.index, rows, strict=True)]
    empty = [f"{patient.id} {side}" for patient, row in zip(patients, rows, strict=True) for side in ("left", "right")
             if not _cell_text(row[f"{side.capitalize()}-Diagnostic Keywords"])]
    if empty:
        _log.warning("%d eyes have an empty diagnostic keyword cell in %s and stay unlabelled (patient ID, eye: %s); "
                     "fill the cells to use them", len(empty), annotation, ", ".join(empty[:20])
                     + (f" and {len(empty) - 20} more" if len(empty) > 20 else ""))
    ids = Counter(patient.id for patient in patients)
    duplicated = [patient_id for patient_id, count in ids.items() if count > 1]
    if duplicated:
        raise DataError(
            f"patient ID {duplicated[0]} appears more than once in {annotation} "
            f"({len(duplicated)} duplicated IDs); each patient needs exactly one row"
        )
    _check_images(patients, annotation)
    return sorted(patients, key=lambda patient: patient.id)


def label_disagreements(patients: Iterable[Patient]) -> list[int]:
    """Ids whose sheet labels differ from those implied by the per-eye keywords (reported, not fatal:
    the real sheet has some)."""
    return [
        patient.id
        for patient in patients
        if patient_labels_from_eyes(patient.left_labels, patient.right_labels) != patient.patient_labels
    ]


def unlabelled_eyes(patients: Iterable[Patient]) -> list[tuple[int, str]]:
    """(patient id, "left" or "right") for each eye that had no usable keyword."""
    found = []
    for patient in patients:
        if not patient.left_labels:
            found.append((patient.id, "left"))
        if not patient.right_labels:
            found.append((patient.id, "right"))
    return found


def split_patients(
    patients: Sequence[Patient], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[Patient]]:
    """Split by patient into train/valid/test, stratified by each patient's rarest label so that rare
    classes reach every split when they have enough patients. Deterministic for a seed."""
    if len(fractions) != len(SPLITS) or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    frequency = Counter(label for patient in patients for label in patient.patient_labels)
    strata: dict[str, list[Patient]] = defaultdict(list)
    for patient in sorted(patients, key=lambda patient: patient.id):
        rarest = min(patient.patient_labels, key=lambda label: (frequency[label], CLASSES.index(label)), default="")
        strata[rarest].append(patient)
    rng = np.random.default_rng(seed)
    splits: dict[str, list[Patient]] = {name: [] for name in SPLITS}
    for key in sorted(strata):
        members = strata[key]
        order = rng.permutation(len(members))
        start = 0
        for name, count in zip(SPLITS, _stratum_counts(len(members), fractions), strict=True):
            splits[name].extend(members[i] for i in order[start : start + count])
            start += count
    return {name: sorted(members, key=lambda patient: patient.id) for name, members in splits.items()}


def _stratum_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder allocation of n patients, then at least one per non-empty split if n allows."""
    counts = [math.floor(n * fraction) for fraction in fractions]
    by_remainder = sorted(range(len(counts)), key=lambda i: n * fractions[i] - counts[i], reverse=True)
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    wanted = [i for i, fraction in enumerate(fractions) if fraction > 0]
    if n >= len(wanted):
        for i in wanted:
            if counts[i] == 0:
                counts[counts.index(max(counts))] -= 1
                counts[i] += 1
    return counts


def _read_table(path: Path) -> pd.DataFrame:
    try:
        if path.suffix == ".csv":
            return pd.read_csv(path)
        return pd.read_excel(path, engine="openpyxl")
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {path}: {error}; re-download or re-extract the file") from error


def _one_row_per_patient(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Collapse the Kaggle csv (one row per shipped image) to one row per patient.

    The variant leaves some images out; a patient missing an eye's row is skipped with a warning,
    since both eyes are needed.
    """
    rows = table.drop_duplicates(subset=list(COLUMNS))
    conflicting = rows["ID"][rows["ID"].duplicated()]
    if len(conflicting):
        raise DataError(
            f"patient ID {conflicting.iloc[0]} has rows that disagree on {', '.join(COLUMNS)} in {path}; "
            "every image row of a patient must repeat the same patient fields"
        )
    shipped = set(table["filename"])
    complete = rows["Left-Fundus"].isin(shipped) & rows["Right-Fundus"].isin(shipped)
    if not complete.all():
        _log.warning(
            "%d of %d patients in %s have an image row for one eye only; skipping them",
            int((~complete).sum()),
            len(rows),
            path,
        )
    return rows[complete]


def _patient(row: dict[str, Any], row_number: int, path: Path, images_dir: Path) -> Patient:
    where = f"row {row_number} of {path} (counting the header as row 1)"
    patient_id = _int_cell(row["ID"], "ID", where)
    where = f"{where}, patient ID {patient_id}"
    labels = []
    for label in CLASSES:
        value = _int_cell(row[label], label, where)
        if value not in (0, 1):
            raise DataError(f"column '{label}' is {value} in {where}; label cells must be 0 or 1")
        if value:
            labels.append(label)
    left_keywords = _usable_keywords(row["Left-Diagnostic Keywords"])
    right_keywords = _usable_keywords(row["Right-Diagnostic Keywords"])
    return Patient(
        id=patient_id,
        age=_int_cell(row["Patient Age"], "Patient Age", where),
        sex=_text_cell(row["Patient Sex"], "Patient Sex", where),
        left_image=images_dir / _text_cell(row["Left-Fundus"], "Left-Fundus", where),
        right_image=images_dir / _text_cell(row["Right-Fundus"], "Right-Fundus", where),
        left_keywords=left_keywords,
        right_keywords=right_keywords,
        left_labels=eye_labels(left_keywords),
        right_labels=eye_labels(right_keywords),
        patient_labels=tuple(labels),
    )


def _cell_text(cell: Any) -> str:
    return "" if pd.isna(cell) else str(cell).strip()


def _usable_keywords(cell: Any) -> tuple[str, ...]:
    # An empty cell (warned about by read_odir) is treated like an eye whose keywords were all about image quality.
    return tuple(keyword for keyword in split_keywords(_cell_text(cell)) if not is_quality_keyword(keyword))


def _int_cell(value: Any, column: str, where: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not number.is_integer():
        raise DataError(f"column '{column}' holds {value!r} in {where}; it must be a whole number")
    return int(number)


def _text_cell(value: Any, column: str, where: str) -> str:
    text = "" if pd.isna(value) else str(value).strip()
    if not text:
        raise DataError(f"column '{column}' is empty in {where}; fill it in")
    return text


def _check_images(patients: Sequence[Patient], annotation: Path) -> None:
    missing = [
        (patient.id, image)
        for patient in patients
        for image in (patient.left_image, patient.right_image)
        if not image.is_file()
    ]
    if missing:
        patient_id, image = missing[0]
        raise DataError(
            f"image {image} of patient ID {patient_id} is missing ({len(missing)} of "
            f"{2 * len(patients)} images named in {annotation} are missing); re-extract the archive"
        )
