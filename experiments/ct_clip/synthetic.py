"""A synthetic CT-RATE in the release's own format, in both the v1 and the v2 convention.

Patients have one or more scans and each scan one or more reconstructions (as CT-RATE's
`{split}_{patient}_{scan}_{reconstruction}` names): the reconstructions of a scan share its labels,
report and abnormalities, and differ in spacing, slice count and noise, so their predictions are
correlated as real ones are. Each volume is a chest-like block (air around a smooth body of lung
density) in which every present abnormality is a noisy dense ball at its own place relative to the
volume's centre, and its report says "{label} is present." (a share of the absent ones are negated,
"{label} is not present.", as real reports do). The v1 tree stores HU + 1024 (with RescaleSlope 1
and RescaleIntercept -1024 in the metadata), the v2 tree stores HU with the same metadata, as the
real v2 release does. Spacing and slice count vary per volume so that resampling and crop/pad do
real work; the balls are placed in millimetres, so they land on the same spot after preprocessing.
"""

import csv
import gzip
import io
from pathlib import Path

import nibabel as nib
import numpy as np

from experiments.ct_clip.config import SyntheticConfig
from experiments.ct_clip.ctrate import CSV_NAMES, LABELS, METADATA_COLUMNS, REPORT_COLUMNS, csv_dir, volume_path
from medrepro import atomic

INTERCEPT = -1024.0
BALL_HU = 300.0
BALL_RADIUS_MM = 5.0
SPLIT_IDS = {"train": 0, "valid": 1}
# The share of absent labels whose report sentence says "{label} is not present.".
NEGATED = 0.3
# Centres of the 18 balls in mm from the volume's centre: a 3 × 6 grid in the axial plane, 12 mm apart.
BALL_CENTRES_MM = [((k % 6 - 2.5) * 12.0, (k // 6 - 1.0) * 12.0, 0.0) for k in range(len(LABELS))]


def scans(split: str, n: int, cfg: SyntheticConfig, rng: np.random.Generator) -> list[list[str]]:
    """Volume names grouped by scan, `n` volumes in all: patients numbered from 1, each with 1 to
    `cfg.scans` scans of 1 to `cfg.reconstructions` reconstructions (the last patient may be cut short)."""
    groups: list[list[str]] = []
    patient, total = 0, 0
    while total < n:
        patient += 1
        for scan in "abcdefgh"[:int(rng.integers(1, cfg.scans + 1))]:
            count = min(int(rng.integers(1, cfg.reconstructions + 1)), n - total)
            if count > 0:
                groups.append([f"{split}_{patient}_{scan}_{r}.nii.gz" for r in range(1, count + 1)])
                total += count
    return groups


def synthetic_volume(labels: np.ndarray, shape_xyz: tuple[int, int, int], spacing_xyz: tuple[float, float, float],
                     rng: np.random.Generator) -> np.ndarray:
    """HU as int16, (x, y, z)."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape_xyz, spacing_xyz, strict=True)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    half = min(shape_xyz[0] * spacing_xyz[0], shape_xyz[1] * spacing_xyz[1]) / 2
    body = np.hypot(x, y) < 0.96 * half
    # A smooth background: CTViT normalises each patch (LayerNorm over its voxels), which would blow
    # background noise up to unit variance and bury the balls in it.
    hu = np.where(body, -850.0, -1000.0)
    for k in np.flatnonzero(labels):
        cx, cy, cz = BALL_CENTRES_MM[k]
        ball = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 < BALL_RADIUS_MM ** 2
        hu[ball] = BALL_HU + rng.normal(0.0, 30.0, size=int(ball.sum()))
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def report(labels: np.ndarray, rng: np.random.Generator) -> tuple[str, str]:
    """(Findings, Impressions): every present label, and some absent ones negated, in a random order."""
    sentences = [f"{LABELS[k]} is present." for k in np.flatnonzero(labels)]
    sentences += [f"{LABELS[k]} is not present." for k in np.flatnonzero(labels == 0) if rng.random() < NEGATED]
    order = rng.permutation(len(sentences))
    findings = " ".join(["The trachea and both main bronchi are open.", *(sentences[i] for i in order)])
    present = [LABELS[k].lower() for k in np.flatnonzero(labels)]
    impressions = ("Findings consistent with " + ", ".join(present) + ".") if present else "No acute abnormality."
    return findings, impressions


def _csv_text(columns: list[str], rows: list[list]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return out.getvalue()


def _nifti(stored: np.ndarray, spacing_xyz: tuple[float, float, float]) -> nib.Nifti1Image:
    affine = np.diag([*spacing_xyz, 1.0])
    affine[:3, 3] = [-(n - 1) / 2 * s for n, s in zip(stored.shape, spacing_xyz, strict=True)]
    image = nib.Nifti1Image(stored, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return image


def write_synthetic_ctrate(root: Path, cfg: SyntheticConfig, seed: int) -> Path:
    """Both trees (v1 and v2) and the CSVs under `root`/dataset; every draw comes from `seed`."""
    dirs = csv_dir(root)
    for split, n in (("train", cfg.train), ("valid", cfg.valid)):
        rng = np.random.default_rng([seed, SPLIT_IDS[split]])
        reports, labels_rows, metadata = [], [], []
        for scan in scans(split, n, cfg, rng):
            labels = (rng.random(len(LABELS)) < cfg.prevalence).astype(np.int64)
            findings, impressions = report(labels, rng)
            for name in scan:
                spacing = (float(rng.choice(cfg.spacing_xy)),) * 2 + (float(rng.choice(cfg.spacing_z)),)
                shape = (cfg.size_xy, cfg.size_xy, int(rng.integers(cfg.slices[0], cfg.slices[1] + 1)))
                hu = synthetic_volume(labels, shape, spacing, rng)
                for release, stored in (("v1", (hu - INTERCEPT).astype(np.int16)), ("v2", hu)):
                    # mtime 0: the same seed gives the same bytes.
                    atomic.write_bytes(volume_path(root, release, name),
                                       gzip.compress(_nifti(stored, spacing).to_bytes(), compresslevel=1, mtime=0))
                reports.append([name, "Not given.", "Non-contrast chest CT.", findings, impressions])
                labels_rows.append([name, *labels.tolist()])
                metadata.append([name, 1, INTERCEPT, f"[{spacing[0]}, {spacing[1]}]", spacing[2], "SYNTHETIC"])
        report_csv, labels_csv, metadata_csv = CSV_NAMES[split]
        atomic.write_text(dirs["reports"] / report_csv, _csv_text(list(REPORT_COLUMNS), reports))
        atomic.write_text(dirs["labels"] / labels_csv, _csv_text(["VolumeName", *LABELS], labels_rows))
        atomic.write_text(dirs["metadata"] / metadata_csv, _csv_text([*METADATA_COLUMNS, "Manufacturer"], metadata))
    return root

