"""Readers of what cross_encoder's steps wrote: the prepared tables, the index's names, the mined pairs
and candidates, and an exported model's calibration.

Each missing file is one line naming the command that writes it. The writers (prepare.py,
retrieval.py, mining.py, export.py) stay out of a reader's imports: reading pairs does not load the
UMLS loader, FAISS or the synthetic generator.
"""

import json
from pathlib import Path

import numpy as np

from experiments.cross_encoder.layout import (
    CALIBRATION_FILE,
    CANDIDATES_FILE,
    CONCEPTS_FILE,
    MENTIONS_FILE,
    NAMES_FILE,
    SUMMARY_FILE,
    pairs_file,
)
from experiments.cross_encoder.records import Concept, MentionRecord, Pair
from medrepro import repro
from medrepro.errors import DataError


def _checked(prepared: str | Path, name: str) -> Path:
    """A table of prepared/ that matches the checksum its prepare run wrote into summary.json."""
    path, summary = Path(prepared) / name, Path(prepared) / SUMMARY_FILE
    if not path.is_file() or not summary.is_file():
        raise DataError(f"{path if not path.is_file() else summary} is missing: run `medrepro cross_encoder "
                        "prepare` first")
    expected = json.loads(summary.read_text()).get("files", {}).get(name)
    if expected != repro.sha256_file(path):
        raise DataError(f"{path} does not match the checksum in {summary} (a prepare run was interrupted or the "
                        "file was changed): run `medrepro cross_encoder prepare` again")
    return path


def read_concepts(prepared: str | Path) -> list[Concept]:
    path = _checked(prepared, CONCEPTS_FILE)
    return [Concept(d["cui"], d["preferred"], tuple(d["names"]), tuple(d["types"]))
            for d in map(json.loads, path.read_text().splitlines())]


def concept_type_names(prepared: str | Path, concepts: list[Concept]) -> list[list[str]]:
    """Per concept, the names of its semantic types (MRSTY's STY), which the cross-encoder reads after
    a candidate's name."""
    _checked(prepared, CONCEPTS_FILE)  # summary.json belongs to these tables
    names = json.loads((Path(prepared) / SUMMARY_FILE).read_text())["type_names"]
    return [[names.get(t, t) for t in c.types] for c in concepts]


def read_mentions(prepared: str | Path) -> list[MentionRecord]:
    path = _checked(prepared, MENTIONS_FILE)
    return [MentionRecord(**{**d, "types": tuple(d["types"])}) for d in map(json.loads, path.read_text().splitlines())]


def read_names(index: str | Path) -> list[dict[str, str]]:
    """The index's rows: {"cui", "name"} per vector."""
    path = Path(index) / NAMES_FILE
    if not path.is_file():
        raise DataError(f"{path} is missing: run `medrepro cross_encoder index` first")
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_pairs(mined: str | Path, split: str) -> list[Pair]:
    path = Path(mined) / pairs_file(split)
    if not path.is_file():
        raise DataError(f"{path} is missing: run `medrepro cross_encoder mine` first")
    return [Pair(**d) for d in map(json.loads, path.read_text().splitlines())]


def read_candidates(mined: str | Path) -> dict[str, np.ndarray]:
    path = Path(mined) / CANDIDATES_FILE
    if not path.is_file():
        raise DataError(f"{path} is missing: run `medrepro cross_encoder mine` first")
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def read_calibration(model_dir: str | Path) -> dict:
    """The scalers and retrieval weight an exported model carries (export.py)."""
    path = Path(model_dir) / CALIBRATION_FILE
    if not path.is_file():
        raise DataError(f"{path} is missing: it is written with the exported model by `medrepro cross_encoder "
                        "export`; export the trained run, or pass the directory of an exported cross-encoder")
    return json.loads(path.read_text())
