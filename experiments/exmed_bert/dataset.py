"""The converted dataset: patient sequences as JSON lines plus a vocabulary, no pickles.

dataset/
  vocab.json          {"tokens": [...], "sexes": [...], "states": [...]}; a token's id is its position.
                      Tokens are the five specials, then `{code}:{vocab}` (ClinGraph's node ids).
  train.jsonl, val.jsonl, test.jsonl
                      one patient a line: patient_id, tokens, types, ages, visits (ids, one per
                      position), sex, state (ids), endpoint (0/1), los (days or null)
  summary.json        counts, dropped codes, truncation, and the checksums of the files above
  source/             the synthetic inputs (smoke): patients.json and clinvec/

A sequence is [CLS], then each visit's codes followed by [SEP]; `visits` numbers the visit of each
position ([CLS] is 0), `types` is 0 for specials and 1, 2, 3 for ICD-10-CM, ATC and CPT.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medrepro import repro
from medrepro.errors import DataError

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD, UNK, CLS, SEP, MASK = range(len(SPECIALS))
TYPE_IDS = {"special": 0, "icd10cm": 1, "atc": 2, "cpt": 3}
SPLITS = ("train", "val", "test")
FILES = ("vocab.json", *(f"{s}.jsonl" for s in SPLITS))


@dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    sexes: list[str]
    states: list[str]

    @property
    def kinds(self) -> list[str]:
        return ["special" if i < len(SPECIALS) else t.rsplit(":", 1)[1] for i, t in enumerate(self.tokens)]


def checked(directory: str | Path, name: str) -> Path:
    """A dataset file that matches the checksum its conversion wrote into summary.json."""
    path, summary = Path(directory) / name, Path(directory) / "summary.json"
    if not path.is_file() or not summary.is_file():
        raise DataError(f"{path if not path.is_file() else summary} is missing: run `medrepro exmed_bert prepare` "
                        "first")
    if json.loads(summary.read_text()).get("files", {}).get(name) != repro.sha256_file(path):
        raise DataError(f"{path} does not match the checksum in {summary} (an interrupted or edited conversion): "
                        "run `medrepro exmed_bert prepare` again")
    return path


def read_vocab(directory: str | Path) -> Vocab:
    return Vocab(**json.loads(checked(directory, "vocab.json").read_text()))


def read_split(directory: str | Path, split: str) -> list[dict]:
    return [json.loads(line) for line in checked(directory, f"{split}.jsonl").read_text().splitlines()]


def pad_batch(records: list[dict], plos_days: float) -> dict[str, torch.Tensor]:
    """Right-padded tensors of a list of records; `attention` is 1 on real positions."""
    n = max(len(r["tokens"]) for r in records)

    def column(key: str) -> torch.Tensor:
        out = np.zeros((len(records), n), dtype=np.int64)
        for row, r in enumerate(records):
            out[row, :len(r[key])] = r[key]
        return torch.from_numpy(out)

    los = [r["los"] for r in records]
    return {
        "tokens": column("tokens"), "types": column("types"), "ages": column("ages"), "visits": column("visits"),
        "attention": (column("tokens") != PAD).long(),
        "sex": torch.tensor([r["sex"] for r in records]), "state": torch.tensor([r["state"] for r in records]),
        "endpoint": torch.tensor([r["endpoint"] for r in records], dtype=torch.float32),
        # -100 where the stay is unknown: the PLOS loss ignores it.
        "plos": torch.tensor([-100 if v is None else int(v > plos_days) for v in los]),
    }
