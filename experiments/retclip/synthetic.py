"""Synthetic ODIR-5K in exactly the real layout, with a planted, learnable class signal.

Tests and smoke runs use it in place of the licensed data: the same sheet columns, the same keyword
strings and separators, JPEGs of varying non-square sizes, realistic class imbalance, and per-class
picture cues strong enough to survive downscaling to 32×32 so a working pipeline can learn them.
"""

import io
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from experiments.retclip.odir import (
    ANNOTATION_NAME,
    CLASSES,
    COLUMNS,
    IMAGES_DIR_NAME,
    patient_labels_from_eyes,
)
from medrepro.atomic import atomic_dir

# Per-eye class frequencies, close to the real per-image imbalance.
CLASS_PROBABILITIES: dict[str, float] = {
    "N": 0.40, "D": 0.22, "G": 0.06, "C": 0.07, "A": 0.05, "H": 0.05, "M": 0.05, "O": 0.10,
}  # fmt: skip

# Real ODIR keyword strings; each must map back to its class through `keyword_class`.
CLASS_KEYWORDS: dict[str, tuple[str, ...]] = {
    "N": ("normal fundus",),
    "D": (
        "mild nonproliferative retinopathy",
        "moderate non proliferative retinopathy",
        "severe nonproliferative retinopathy",
        "proliferative diabetic retinopathy",
    ),
    "G": ("glaucoma", "suspected glaucoma"),
    "C": ("cataract",),
    "A": ("dry age-related macular degeneration", "wet age-related macular degeneration"),
    "H": ("hypertensive retinopathy",),
    "M": ("pathological myopia",),
    "O": (
        "drusen",
        "epiretinal membrane",
        "laser spot",
        "macular epiretinal membrane",
        "vitreous degeneration",
        "branch retinal vein occlusion",
        "myelinated nerve fibers",
        "chorioretinal atrophy",
    ),
}
SYNTHETIC_QUALITY_KEYWORDS: tuple[str, ...] = ("lens dust", "low image quality")

QUALITY_RATE = 0.08  # an extra quality keyword beside the disease keywords
ONLY_QUALITY_RATE = 0.01  # an eye with nothing but a quality keyword
# A diseased eye gets a second disease with this probability: 0.13 × P(not N) ≈ 8 % of all eyes.
SECOND_DISEASE_RATE = 0.13
SAME_AS_OTHER_EYE_RATE = 0.4  # both eyes of a patient often share a diagnosis
SECONDARY_CUE_WEIGHT = 0.35  # a multi-label eye shows mostly its first label
JPEG_QUALITY = 90

# Per-class global colour gains (R, G, B); together with the structures in `_apply_cue` they keep
# classes apart after a 32×32 downscale.
_TINTS: dict[str, tuple[float, float, float]] = {
    "N": (1.0, 1.0, 1.0),
    "D": (1.0, 1.25, 0.7),
    "G": (0.8, 0.9, 1.4),
    "C": (1.0, 1.0, 1.0),
    "A": (0.75, 1.0, 1.05),
    "H": (1.3, 0.65, 0.75),
    "M": (1.1, 1.05, 0.95),
    "O": (0.9, 1.35, 1.1),
}
_ZIP_TIME = (2019, 1, 1, 0, 0, 0)
_XLSX_TIMESTAMP = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@dataclass(frozen=True)
class _Eye:
    labels: tuple[str, ...]  # in drawing order: the first label's cue dominates
    keywords: tuple[str, ...]
    quality: tuple[str, ...]


@dataclass(frozen=True)
class _Geometry:
    u: np.ndarray  # horizontal position in fundus radii from the fundus centre
    v: np.ndarray
    fundus: np.ndarray  # soft mask of the fundus disc
    disc_u: float  # optic disc centre
    disc_v: float


def write_synthetic_odir(root: Path, n_patients: int, seed: int, min_size: int = 96, max_size: int = 192) -> Path:
    """Write a synthetic ODIR-5K to `root/ODIR-5K`, replacing any earlier one, and return that
    directory. The same arguments give the same bytes."""
    if n_patients < 1:
        raise ValueError(f"n_patients must be at least 1, got {n_patients}")
    if not 32 <= min_size < max_size:
        raise ValueError(f"need 32 <= min_size < max_size, got {min_size} and {max_size}")
    rng = np.random.default_rng(seed)
    # Real IDs are integers with gaps.
    ids = np.sort(rng.choice(3 * n_patients, size=n_patients, replace=False))
    rows = []
    target = Path(root) / "ODIR-5K"
    with atomic_dir(target) as tmp:
        images = tmp / IMAGES_DIR_NAME
        images.mkdir()
        for patient_id in ids.tolist():
            left = _draw_eye(rng, _draw_labels(rng))
            same = left.labels and rng.random() < SAME_AS_OTHER_EYE_RATE
            right = _draw_eye(rng, left.labels if same else _draw_labels(rng))
            names = {side: f"{patient_id}_{side}.jpg" for side in ("left", "right")}
            for side, eye in (("left", left), ("right", right)):
                (images / names[side]).write_bytes(_jpeg(_render(rng, eye, side, min_size, max_size)))
            labels = patient_labels_from_eyes(left.labels, right.labels)
            rows.append(
                [
                    patient_id,
                    int(rng.integers(1, 92)),
                    "Male" if rng.random() < 0.5 else "Female",
                    names["left"],
                    names["right"],
                    _keyword_cell(rng, left),
                    _keyword_cell(rng, right),
                    *(int(label in labels) for label in CLASSES),
                ]
            )
        (tmp / ANNOTATION_NAME).write_bytes(_xlsx(pd.DataFrame(rows, columns=list(COLUMNS))))
    return target


def _draw_labels(rng: np.random.Generator) -> tuple[str, ...]:
    """One eye's classes in drawing order: a diseased eye sometimes has a second disease."""
    classes = list(CLASS_PROBABILITIES)
    weights = np.array(list(CLASS_PROBABILITIES.values()))
    first = str(rng.choice(classes, p=weights / weights.sum()))
    if first == "N" or rng.random() >= SECOND_DISEASE_RATE:
        return (first,)
    second_weights = weights * np.array([label not in ("N", first) for label in classes])
    return first, str(rng.choice(classes, p=second_weights / second_weights.sum()))


def _draw_eye(rng: np.random.Generator, labels: tuple[str, ...]) -> _Eye:
    if rng.random() < ONLY_QUALITY_RATE:
        return _Eye((), (), (str(rng.choice(SYNTHETIC_QUALITY_KEYWORDS)),))
    keywords = tuple(str(rng.choice(CLASS_KEYWORDS[label])) for label in labels)
    quality = (str(rng.choice(SYNTHETIC_QUALITY_KEYWORDS)),) if rng.random() < QUALITY_RATE else ()
    return _Eye(labels, keywords, quality)


def _keyword_cell(rng: np.random.Generator, eye: _Eye) -> str:
    keywords = list(eye.keywords)
    for keyword in eye.quality:
        keywords.insert(int(rng.integers(0, len(keywords) + 1)), keyword)
    return "，".join(keywords)


def _render(rng: np.random.Generator, eye: _Eye, side: str, min_size: int, max_size: int) -> np.ndarray:
    height = int(rng.integers(min_size, max_size + 1))
    # Real photographs are not square: draw the width from the sizes other than the height.
    width = int(rng.integers(min_size, max_size))
    width += width >= height
    geometry = _geometry(rng, height, width, side)
    brightness = np.clip(1.0 - 0.35 * (geometry.u**2 + geometry.v**2), 0.3, 1.0)
    image = _rgb(0.85, 0.35, 0.15) * brightness[..., None]
    image = _blend(image, _rgb(1.0, 0.85, 0.55), _spots(geometry, [(geometry.disc_u, geometry.disc_v)], 0.12))
    macula = (float(rng.normal(0.0, 0.04)), float(rng.normal(0.0, 0.04)))
    image *= 1.0 - 0.15 * _spots(geometry, [macula], 0.12)[..., None]
    for label, weight in zip(eye.labels, (1.0, SECONDARY_CUE_WEIGHT), strict=False):
        cued = _apply_cue(rng, image, geometry, label, macula)
        image += weight * (cued - image)
    for keyword in eye.quality:
        image = _apply_quality(rng, image, geometry, keyword)
    gain = rng.uniform(0.8, 1.2) * rng.uniform(0.95, 1.05, size=3).astype(np.float32)
    image = image * gain * geometry.fundus[..., None] + 0.02
    image += 0.03 * rng.standard_normal(image.shape, dtype=np.float32)
    return (np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def _geometry(rng: np.random.Generator, height: int, width: int, side: str) -> _Geometry:
    size = min(height, width)
    radius = 0.46 * size * rng.uniform(0.95, 1.03)
    centre_y = height / 2 + rng.normal(0.0, 0.02 * size)
    centre_x = width / 2 + rng.normal(0.0, 0.02 * size)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = (x - centre_x) / radius, (y - centre_y) / radius
    fundus = np.clip((1.0 - np.sqrt(u**2 + v**2)) * 20.0, 0.0, 1.0)
    # The optic disc sits nasally: on the right of a right-eye photograph, on the left of a left one.
    disc_u = (0.45 if side == "right" else -0.45) + rng.normal(0.0, 0.04)
    return _Geometry(u, v, fundus, float(disc_u), float(rng.normal(0.0, 0.05)))


def _rgb(red: float, green: float, blue: float) -> np.ndarray:
    # float32 throughout: float64 would double the generator's run time.
    return np.array([red, green, blue], dtype=np.float32)


def _spots(geometry: _Geometry, centres: Sequence[tuple[float, float]], radius: float | np.ndarray) -> np.ndarray:
    """Union of soft discs: 1 inside `radius` (one per centre, or shared), fading out over a fifth of it."""
    centre_u, centre_v = (np.array(axis, dtype=np.float32)[:, None, None] for axis in zip(*centres, strict=True))
    radius = np.broadcast_to(np.asarray(radius, dtype=np.float32), (len(centres),))[:, None, None]
    distance = np.sqrt((geometry.u - centre_u) ** 2 + (geometry.v - centre_v) ** 2)
    return np.clip((radius - distance) / (0.2 * radius) + 1.0, 0.0, 1.0).max(axis=0)


def _blend(image: np.ndarray, colour: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return image + mask[..., None] * (colour - image)


def _apply_cue(
    rng: np.random.Generator,
    image: np.ndarray,
    geometry: _Geometry,
    label: str,
    macula: tuple[float, float],
) -> np.ndarray:
    """The picture of one class: a global tint plus a class-specific structure."""
    image = image * _rgb(*_TINTS[label])
    if label == "D":  # hard exudates: bright yellow dots
        count = int(rng.integers(15, 30))
        dots = _spots(geometry, rng.uniform(-0.7, 0.7, size=(count, 2)), rng.uniform(0.03, 0.06, size=count))
        image = _blend(image, _rgb(1.0, 0.95, 0.4), dots)
    elif label == "G":  # enlarged, bright optic cup
        image = _blend(image, _rgb(1.0, 1.0, 0.9), _spots(geometry, [(geometry.disc_u, geometry.disc_v)], 0.25))
    elif label == "C":  # lens opacity: white haze over the whole fundus
        image += 0.55 * (_rgb(0.9, 0.9, 0.88) - image)
    elif label == "A":  # dark macular lesion
        image = _blend(image, _rgb(0.15, 0.08, 0.05), _spots(geometry, [macula], 0.25))
    elif label == "H":  # dark streaks standing in for narrowed, tortuous vessels
        stripes = np.sin(geometry.v * np.float32(5.0 * np.pi) + np.float32(rng.uniform(0, 2 * np.pi))) > 0.55
        image *= np.where(stripes, np.float32(0.4), np.float32(1.0))[..., None]
    elif label == "M":  # large pale peripapillary atrophy
        region = _spots(geometry, [(geometry.disc_u * 0.8, geometry.disc_v)], 0.45)
        image = _blend(image, _rgb(0.95, 0.85, 0.7), 0.8 * region)
    elif label == "O":  # bright membrane ring around the macula
        ring = _spots(geometry, [macula], 0.4) - _spots(geometry, [macula], 0.28)
        image = _blend(image, _rgb(0.9, 1.0, 0.9), 0.8 * ring)
    return image


def _apply_quality(rng: np.random.Generator, image: np.ndarray, geometry: _Geometry, keyword: str) -> np.ndarray:
    if keyword == "lens dust":
        dust = _spots(geometry, rng.uniform(-0.8, 0.8, size=(int(rng.integers(3, 7)), 2)), 0.05)
        return _blend(image, _rgb(0.3, 0.3, 0.3), 0.5 * dust)
    return image * 0.6 + 0.05  # low image quality: dim and washed out


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _xlsx(table: pd.DataFrame) -> bytes:
    """The sheet as xlsx bytes that depend only on its content: openpyxl stamps the save time into
    the document properties and the zip entries, so both are pinned."""
    written = io.BytesIO()
    table.to_excel(written, index=False, engine="openpyxl")
    pinned = io.BytesIO()
    with zipfile.ZipFile(written) as source, zipfile.ZipFile(pinned, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            if name == "docProps/core.xml":
                data = _XLSX_TIMESTAMP.sub(b"2019-01-01T00:00:00Z", data)
            target.writestr(zipfile.ZipInfo(name, date_time=_ZIP_TIME), data, zipfile.ZIP_DEFLATED)
    return pinned.getvalue()
