"""Synthetic BIOMEDICA-style WebDataset shards with a planted image–caption signal.

Each sample is what a BIOMEDICA shard holds: `__key__`, `jpg` (the figure panel), `txt` (its caption)
and `json` (metadata: article, journal, license, panel type, primary and secondary labels...).
The planted signal: a coloured lesion on a noisy background. Its colour (4) and its quadrant (4)
make 16 classes, named in the caption and in `primary_label` ("red lesion in the upper left"); its
size (small or large) is named in the caption only, so retrieval has more to match than the class.
Four classes, one per colour and per quadrant, appear only in the held-out shard: zero-shot on them
needs the model to compose a colour and a place it has only seen in other pairings.

Every draw is keyed by (seed, split, sample index), so a shard's bytes depend on nothing else; tar
members get a fixed mtime, so the same config writes byte-identical shards.
"""

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from experiments.biomedica_clip.config import SyntheticConfig
from medrepro import atomic

COLOURS = {"red": (205, 45, 40), "green": (45, 165, 70), "blue": (50, 85, 215), "yellow": (225, 200, 45)}
REGIONS = ("upper left", "upper right", "lower left", "lower right")
SIZES = {"small": 0.28, "large": 0.44}
# One class per colour and per quadrant, never seen in training.
HELDOUT_CLASSES = tuple(f"{c} lesion in the {r}" for c, r in zip(COLOURS, REGIONS, strict=True))
ALL_CLASSES = tuple(f"{c} lesion in the {r}" for c in COLOURS for r in REGIONS)
TRAIN_CLASSES = tuple(c for c in ALL_CLASSES if c not in HELDOUT_CLASSES)
PANELS = ("microscopy", "clinical photograph", "histology", "dermoscopy")
JOURNALS = ("J Synth Pathol", "Synth Med Imaging", "Arch Synth Dermatol")
LICENSES = ("CC BY", "CC0", "CC BY-NC")
SPLITS = {"train": 0, "heldout": 1}
# Tar members' modification time: fixed, so shards are byte-reproducible.
MTIME = 0.0


@dataclass(frozen=True)
class Sample:
    key: str
    jpg: bytes
    txt: str
    meta: dict


def render(colour: str, region: str, size: str, side: int, rng: np.random.Generator) -> Image.Image:
    """A noisy grey field with a square lesion of the given colour, quadrant and size (±10 % jitter)."""
    image = rng.normal(128, 25, size=(side, side, 3))
    half = side // 2
    extent = max(2, round(SIZES[size] * side * rng.uniform(0.9, 1.1)))
    top = (0 if region.startswith("upper") else half) + int(rng.integers(0, max(1, half - extent + 1)))
    left = (0 if region.endswith("left") else half) + int(rng.integers(0, max(1, half - extent + 1)))
    image[top:top + extent, left:left + extent] = np.array(COLOURS[colour]) + rng.normal(0, 12, (extent, extent, 3))
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def make_sample(seed: int, split: str, index: int, classes: tuple[str, ...], cfg: SyntheticConfig) -> Sample:
    rng = np.random.default_rng([seed, SPLITS[split], index])
    label = classes[int(rng.integers(len(classes)))]
    colour, _, region = label.partition(" lesion in the ")
    size = ("small", "large")[int(rng.integers(2))]
    panel = PANELS[int(rng.integers(len(PANELS)))]
    buffer = io.BytesIO()
    render(colour, region, size, cfg.image_size, rng).save(buffer, format="JPEG", quality=cfg.jpeg_quality)
    article = 1_000_000 + SPLITS[split] * 500_000 + index // 4
    caption = f"{panel.capitalize()} of a {size} {colour} lesion in the {region} of the field."
    meta = {
        "image_id": f"PMC{article}_fig{index % 4 + 1}",
        "pmid": str(30_000_000 + article), "pmcid": f"PMC{article}",
        "article_title": f"Synthetic case report {article}",
        "journal": JOURNALS[article % len(JOURNALS)], "publication_date": "2024-01-01",
        "license": LICENSES[article % len(LICENSES)],
        "panel_type": "single panel", "primary_label": label, "secondary_label": panel,
        "keywords": [colour, region, size],
    }
    return Sample(f"pmc{article}_fig{index % 4 + 1}", buffer.getvalue(), caption, meta)


def samples(seed: int, split: str, count: int, cfg: SyntheticConfig) -> Iterator[Sample]:
    classes = TRAIN_CLASSES if split == "train" else ALL_CLASSES
    for index in range(count):
        yield make_sample(seed, split, index, classes, cfg)


def write_shards(directory: Path, items: Iterator[Sample], per_shard: int) -> dict[str, int]:
    """`%06d.tar` shards of `per_shard` samples and open_clip's sizes.json; returns the sizes."""
    directory.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(directory / "%06d.tar"), maxcount=per_shard, mtime=MTIME, verbose=0) as sink:
        for s in items:
            sink.write({"__key__": s.key, "jpg": s.jpg, "txt": s.txt.encode(),
                        "json": json.dumps(s.meta, sort_keys=True).encode()})
    sizes = {}
    for shard in sorted(directory.glob("*.tar")):
        sizes[shard.name] = sum(1 for _ in wds.WebDataset(str(shard), shardshuffle=False, empty_check=False))
    atomic.write_json(directory / "sizes.json", sizes)
    return sizes


def write_csv_twin(directory: Path, items: Iterator[Sample], table: str = "train.csv") -> int:
    """The same samples for `--dataset-type csv`: images/<key>.jpg and a tab-separated `filepath, caption`
    table (open_clip's default separator). Paths are relative to the table's directory, so the data
    can move; `train` hands open_clip a copy with absolute paths (it opens them as given)."""
    images = directory / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in items:
        (images / f"{s.key}.jpg").write_bytes(s.jpg)
        rows.append((f"images/{s.key}.jpg", s.txt))
    with open(directory / table, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["filepath", "caption"])
        writer.writerows(rows)
    return len(rows)
