"""Synthetic BIOMEDICA-style WebDataset shards with a planted image–caption signal.

Each sample is what a BIOMEDICA shard holds (metadata.py quotes the archive's fields and their source):
`__key__` shaped like the archive's figure file names (`<batch>-<PMC id>-<position>-<image id>`), `jpg`
(the figure panel), `txt` (its caption) and `json` with every field the archive writes, under its names:
labels as lists of strings, the article in `article_accession_id`, four figures per article.
The planted signal: a coloured lesion on a noisy background. Its colour (4) and its quadrant (4)
make 16 classes, named in the caption and as the one entry of `image_primary_label` ("red lesion in
the upper left"); its size (small or large) is named in the caption only, so retrieval has more to
match than the class.
Four classes, one per colour and per quadrant, appear only in the held-out shard: zero-shot on them
needs the model to compose a colour and a place it has only seen in other pairings.

Every draw is keyed by (seed, split, sample index), so a shard's bytes depend on nothing else; tar
members get a fixed mtime, so the same config writes byte-identical shards.
"""

import csv
import hashlib
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
# The archive's license subsets, which its batch file names carry (filelist_<subset>_batch_<n>_0).
SUBSETS = {"CC BY": "commercial", "CC0": "commercial", "CC BY-NC": "noncommercial"}
FIGURES_PER_ARTICLE = 4
# 2024-01-01 as the archive stores dates: Unix seconds in a string.
DATE = "1704067200"
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
    article = 1_000_000 + SPLITS[split] * 500_000 + index // FIGURES_PER_ARTICLE
    position = index % FIGURES_PER_ARTICLE
    caption = f"{panel.capitalize()} of a {size} {colour} lesion in the {region} of the field."
    meta = record(article, position, label, panel, caption, buffer.getvalue(), cfg.image_size)
    return Sample(sample_key(article, position), buffer.getvalue(), caption, meta)


def article_license(article: int) -> str:
    return LICENSES[article % len(LICENSES)]


def figure_id(article: int, position: int) -> str:
    """A PMC figure file's stem (the archive's image id); dashes inside, as in many real ones."""
    return f"synth-{article}-g{position + 1}"


def sample_key(article: int, position: int) -> str:
    """The archive's key, the figure's file name `<batch>-<PMC id>-<position>-<image id>`; the batch is the
    ETL's JSON batch file of one license subset (filelist_<subset>_batch_<n>_0); here 200 articles each."""
    batch = f"filelist_{SUBSETS[article_license(article)]}_batch_{article // 200}_0"
    return f"{batch}-PMC{article}-{position}-{figure_id(article, position)}"


def record(article: int, position: int, label: str, panel: str, caption: str, jpg: bytes, side: int) -> dict:
    """The sample's json: every field of metadata.FIELDS, in the archive's order, with plausible values.
    `image_set` and `image_context` hold this figure only (the archive's: the article's whole figure set)."""
    pmcid, figure = f"PMC{article}", figure_id(article, position)
    journal = JOURNALS[article % len(JOURNALS)]
    # The archive hashes a PNG of the image; a hash of the JPEG's bytes keeps the shard bytes
    # independent of the zlib build.
    digest = hashlib.sha256(jpg).hexdigest()
    colour, _, region = label.partition(" lesion in the ")
    return {
        "image_file_name": f"{figure}.jpg", "image_cluster_id": figure, "image_hash": digest,
        "image_label_id": str(ALL_CLASSES.index(label)), "image_panel_type": "single",
        "image_panel_subtype": "single panel", "image_primary_label": [label], "image_secondary_label": [panel],
        "image_size": [side, side],
        "image_set": [{"image_id": figure, "image_file_name": f"{figure}.jpg",
                       "image_path": f"../data/{pmcid}/{figure}.jpg", "caption": caption, "hash": digest}],
        "image_context": {figure: [f"The {colour} lesion lies in the {region} of the field (Figure {position + 1})."]},
        "article_accession_id": pmcid, "article_title": f"Synthetic case report {pmcid}", "article_journal": journal,
        "article_date": DATE, "article_abstract": "A synthetic case report of coloured lesions.",
        "article_mesh_terms": ["Humans", "Skin Diseases"], "article_keywords": ["synthetic", "case report"],
        "article_reference_ids": [], "article_reference_count": 0, "article_reference_list": [],
        "article_subject": ["Case Report"], "article_citation": f"{journal}. 2024 Jan 1; 3:{article % 97 + 1}",
        "article_license": article_license(article), "article_text": f"Synthetic case report {pmcid}. {caption}",
    }


def samples(seed: int, split: str, count: int, cfg: SyntheticConfig) -> Iterator[Sample]:
    classes = TRAIN_CLASSES if split == "train" else ALL_CLASSES
    for index in range(count):
        yield make_sample(seed, split, index, classes, cfg)


def write_shards(directory: Path, items: Iterator[Sample], per_shard: int) -> dict[str, int]:
    """`%06d.tar` shards of `per_shard` samples and open_clip's sizes.json; returns the sizes."""
    directory.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(directory / "%06d.tar"), maxcount=per_shard, mtime=MTIME, verbose=0) as sink:
        for s in items:
            sink.write({"__key__": s.key, "jpg": s.jpg, "txt": s.txt.encode(), "json": json.dumps(s.meta).encode()})
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
