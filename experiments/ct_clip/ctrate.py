"""The CT-RATE release as distributed: NIfTI volumes in the v1 or v2 tree and three CSVs per split.

    dataset/train/train_1/train_1_a/train_1_a_1.nii.gz          v1 volumes (stored values)
    dataset/train_fixed/train_1/train_1_a/train_1_a_1.nii.gz    v2 volumes (already Hounsfield units)
    dataset/radiology_text_reports/{train,validation}_reports.csv
    dataset/multi_abnormality_labels/{train,valid}_predicted_labels.csv
    dataset/metadata/{train,validation}_metadata.csv

A volume name is `{split}_{patient}_{scan}_{reconstruction}.nii.gz`: a patient has one or more scans
(`a`, `b`, ...), each with one or more reconstructions; `patient_of` gives the independent unit that
intervals and the selection split work with. The metadata CSV gives the DICOM
rescale slope and intercept and the spacing (`XYSpacing` is a string such as "[0.75, 0.75]"). The v2
volumes were rewritten in HU, but their metadata still lists the original slope and intercept, so
applying them again rescales twice: `hounsfield` decides from the voxels which one a volume needs.
"""

import ast
import csv
import gzip
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from medrepro.errors import DataError

LABELS = (
    "Medical material", "Arterial wall calcification", "Cardiomegaly", "Pericardial effusion",
    "Coronary artery wall calcification", "Hiatal hernia", "Lymphadenopathy", "Emphysema", "Atelectasis",
    "Lung nodule", "Lung opacity", "Pulmonary fibrotic sequela", "Pleural effusion", "Mosaic attenuation pattern",
    "Peribronchial thickening", "Consolidation", "Bronchiectasis", "Interlobular septal thickening",
)
SPLITS = ("train", "valid")
REPORT_COLUMNS = ("VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN")
METADATA_COLUMNS = ("VolumeName", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing")
# The CSV file names differ between the splits ("validation" for two of them, "valid" for the labels).
CSV_NAMES = {
    "train": ("train_reports.csv", "train_predicted_labels.csv", "train_metadata.csv"),
    "valid": ("validation_reports.csv", "valid_predicted_labels.csv", "validation_metadata.csv"),
}
TREES = {"v1": "{split}", "v2": "{split}_fixed"}
VOLUME_NAME = re.compile(r"^(train|valid)_(\d+)_([a-z]+)_(\d+)(\.nii\.gz)?$")
# Air is about -1000 HU; a chest CT has at least this share of its voxels in the band below
# (lungs and the air around the body), in whichever convention is the right one.
AIR_BAND = (-1100.0, -900.0)
MIN_AIR_SHARE = 0.02


@dataclass(frozen=True)
class Record:
    name: str
    path: Path
    findings: str
    impressions: str
    labels: tuple[int, ...]
    slope: float
    intercept: float
    # (x, y, z) in mm, from the metadata CSV.
    spacing: tuple[float, float, float]


def csv_dir(root: Path) -> dict[str, Path]:
    base = root / "dataset"
    return {"reports": base / "radiology_text_reports", "labels": base / "multi_abnormality_labels",
            "metadata": base / "metadata"}


def volume_path(root: Path, release: str, name: str) -> Path:
    match = VOLUME_NAME.match(name)
    if match is None:
        raise DataError(f"volume name {name!r} is not {{split}}_{{patient}}_{{scan}}_{{reconstruction}}.nii.gz")
    split, patient, scan, _, _ = match.groups()
    tree = TREES[release].format(split=split)
    return root / "dataset" / tree / f"{split}_{patient}" / f"{split}_{patient}_{scan}" / name


def patient_of(name: str) -> str:
    """`{split}_{patient}` of a volume name (with or without `.nii.gz`, as the shard keys are)."""
    match = VOLUME_NAME.match(name)
    if match is None:
        raise DataError(f"volume name {name!r} is not CT-RATE's {{split}}_{{patient}}_{{scan}}_{{reconstruction}}: "
                        "the patient of each volume cannot be told; rename the volumes as the release does")
    return f"{match.group(1)}_{match.group(2)}"


def read_csv(path: Path, columns: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Rows of a CT-RATE CSV by VolumeName; DataError naming the file for a missing file, column or name."""
    if not path.is_file():
        raise DataError(f"{path} does not exist: point data.ctrate_root at the CT-RATE directory")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or ())]
        if missing:
            raise DataError(f"{path} has no column {', '.join(missing)}: is it the right CT-RATE file?")
        rows = {}
        for line, row in enumerate(reader, start=2):
            name = row["VolumeName"].strip()
            if name in rows:
                raise DataError(f"{path} line {line}: volume {name} appears twice")
            rows[name] = row
    return rows


def parse_spacing(text: str, where: str) -> tuple[float, float]:
    """'[0.75, 0.75]' → (0.75, 0.75)."""
    try:
        value = ast.literal_eval(text.strip())
        x, y = (float(v) for v in value)
    except (ValueError, SyntaxError, TypeError):
        raise DataError(f"{where}: XYSpacing {text!r} is not a pair such as \"[0.75, 0.75]\"") from None
    if not (x > 0 and y > 0):
        raise DataError(f"{where}: XYSpacing {text!r} must be positive")
    return x, y


def _float(row: dict[str, str], column: str, where: str) -> float:
    try:
        return float(row[column])
    except (TypeError, ValueError):
        raise DataError(f"{where}: {column} {row[column]!r} is not a number") from None


def _label(row: dict[str, str], column: str, where: str) -> int:
    value = row[column].strip()
    if value not in ("0", "1", "0.0", "1.0"):
        raise DataError(f"{where}: label {column!r} is {value!r}; labels must be 0 or 1")
    return int(float(value))


def read_split(root: Path, split: str, release: str) -> list[Record]:
    """Every volume of a split that has a report, labels and metadata, in name order; a volume listed in
    the labels but missing from another CSV or from disk is an error naming it."""
    dirs = csv_dir(root)
    report_csv, labels_csv, metadata_csv = CSV_NAMES[split]
    reports = read_csv(dirs["reports"] / report_csv, REPORT_COLUMNS)
    labels = read_csv(dirs["labels"] / labels_csv, ("VolumeName", *LABELS))
    metadata = read_csv(dirs["metadata"] / metadata_csv, METADATA_COLUMNS)
    records = []
    for name in sorted(labels):
        for table, path in ((reports, report_csv), (metadata, metadata_csv)):
            if name not in table:
                raise DataError(f"{name} is in {labels_csv} but not in {path}")
        where = f"{metadata_csv} ({name})"
        x, y = parse_spacing(metadata[name]["XYSpacing"], where)
        path = volume_path(root, release, name)
        if not path.is_file():
            raise DataError(f"volume {path} is missing on disk (listed in {labels_csv}); check data.release "
                            f"({release}) and data.ctrate_root")
        records.append(Record(
            name=name, path=path,
            findings=reports[name]["Findings_EN"] or "", impressions=reports[name]["Impressions_EN"] or "",
            labels=tuple(_label(labels[name], c, f"{labels_csv} ({name})") for c in LABELS),
            slope=_float(metadata[name], "RescaleSlope", where),
            intercept=_float(metadata[name], "RescaleIntercept", where),
            spacing=(x, y, _float(metadata[name], "ZSpacing", where)),
        ))
    return records


def load_volume(path: Path) -> np.ndarray:
    """The voxels as stored, (x, y, z) float32; DataError for a truncated file or a volume that is not 3-D."""
    try:
        image = nib.load(path)
        shape = image.shape
        if len(shape) != 3:
            raise DataError(f"{path} has {len(shape)} dimensions {tuple(shape)}; a CT volume has 3 (x, y, z)")
        # The raw array: nibabel's own scl_slope/inter are applied, the DICOM rescale is not.
        return np.asarray(image.dataobj, dtype=np.float32)
    except DataError:
        raise
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError, nib.filebasedimages.ImageFileError) as e:
        raise DataError(f"{path} cannot be read ({type(e).__name__}: {e}); the file is truncated or not NIfTI, "
                        "download it again") from None


def _air_share(volume: np.ndarray) -> float:
    return float(np.count_nonzero((volume >= AIR_BAND[0]) & (volume <= AIR_BAND[1]))) / volume.size


def hounsfield(stored: np.ndarray, slope: float, intercept: float, where: str) -> tuple[np.ndarray, bool]:
    """The volume in HU and whether the CSV rescale was applied.

    Whichever reading puts more voxels at air density wins: stored values (v1) have air near 0 with an
    intercept of -1024, HU volumes (v2) have it near -1000 already. A volume where neither reading
    shows air cannot be told apart, and is refused rather than guessed.
    """
    rescaled = stored * np.float32(slope) + np.float32(intercept)
    as_stored, after = _air_share(stored), _air_share(rescaled)
    if max(as_stored, after) < MIN_AIR_SHARE:
        raise DataError(f"{where}: neither the stored values nor slope {slope} / intercept {intercept} put "
                        f"{MIN_AIR_SHARE:.0%} of the voxels at air density ({AIR_BAND[0]:.0f}..{AIR_BAND[1]:.0f} "
                        "HU); is it a chest CT?")
    if after > as_stored:
        return rescaled, True
    return stored, False
