"""`prepare`: patients in the import format (or their synthetic twin) → the converted dataset.

Two streaming passes over the patients file, so an input larger than memory converts in constant
memory apart from the vocabulary: the first validates every patient and counts codes of the
training split, the second writes each patient's sequence to its split's file. A patient's split
comes from a hash of (seed, patient_id): the same patient lands in the same split whatever the
file's order or size. See `dataset` for the output layout.
"""

import argparse
import hashlib
import json
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from experiments.exmed_bert import dataset, synthetic
from experiments.exmed_bert.config import DataConfig, ExMedBertConfig
from experiments.exmed_bert.patients import Patient, ReadReport, read_patients
from medrepro import atomic, repro
from medrepro.errors import ConfigError, DataError


def split_of(patient_id: str, seed: int, fractions: tuple[float, float, float]) -> str:
    u = int.from_bytes(hashlib.sha256(f"{seed}:{patient_id}".encode()).digest()[:8], "big") / 2**64
    return "train" if u < fractions[0] else "val" if u < fractions[0] + fractions[1] else "test"


def encode(patient: Patient, vocab: dict[str, int], sexes: dict[str, int], states: dict[str, int],
           data: DataConfig) -> tuple[dict, bool]:
    """The patient's sequence record and whether it was truncated. Visits are numbered from 1 within the
    kept window (as upstream numbers them after truncation), so a long history keeps its order rather
    than running past the visit table."""
    tokens, types, ages, visits = [dataset.CLS], [0], [0], [0]
    previous, visit = None, 0
    events = list(patient.events)
    for i, event in enumerate(events):
        if event.day != previous:
            visit, previous = visit + 1, event.day
        age = max(0, event.day.year - patient.birth_year)
        tokens.append(vocab.get(f"{event.code}:{event.kind}", dataset.UNK))
        types.append(dataset.TYPE_IDS[event.kind])
        ages.append(age)
        visits.append(visit)
        if i + 1 == len(events) or events[i + 1].day != event.day:
            tokens.append(dataset.SEP)
            types.append(0)
            ages.append(age)
            visits.append(visit)
    truncated = len(tokens) > data.max_length
    if truncated:
        keep = data.max_length - 1
        sl = slice(len(tokens) - keep, None) if data.truncation == "keep_last" else slice(1, 1 + keep)
        tokens, types, ages, visits = ([col[0], *col[sl]] for col in (tokens, types, ages, visits))
        first = visits[1] - 1
        visits = [0, *(v - first for v in visits[1:])]
    record = {"patient_id": patient.patient_id, "tokens": tokens, "types": types, "ages": ages, "visits": visits,
              "sex": sexes[patient.sex], "state": states.get(patient.state, 0), "endpoint": patient.endpoint,
              "los": patient.length_of_stay}
    return record, truncated


def convert(source: Path, out: Path, data: DataConfig, seed: int) -> dict:
    """Write the dataset files into `out` (an empty directory) and return the summary."""
    counts: Counter[str] = Counter()
    states: set[str] = set()
    per_split: Counter[str] = Counter()
    report = ReadReport()
    for patient in read_patients(source, data, report):
        split = split_of(patient.patient_id, seed, data.split)
        per_split[split] += 1
        if split == "train":
            counts.update(f"{e.code}:{e.kind}" for e in patient.events)
            states.add(patient.state)
    if min(per_split[s] for s in dataset.SPLITS) < 2:
        raise DataError(f"{source}: the split {dict(per_split)} leaves a split with fewer than 2 patients: "
                        "use more patients or change data.split")
    # Sorted by vocabulary, then code: ids do not depend on the order of the file.
    tokens = [*dataset.SPECIALS, *sorted((t for t, c in counts.items() if c >= data.min_count),
                                         key=lambda t: (t.rsplit(":", 1)[1], t))]
    vocab = dataset.Vocab(tokens, ["[UNK]", *sorted(set("FMU"))], ["[UNK]", *sorted(states)])
    ids = {t: i for i, t in enumerate(tokens)}
    sex_ids = {s: i for i, s in enumerate(vocab.sexes)}
    state_ids = {s: i for i, s in enumerate(vocab.states)}

    truncated, positives, unknown = 0, Counter(), 0
    with ExitStack() as stack:
        files = {s: stack.enter_context(open(out / f"{s}.jsonl", "w", encoding="utf-8")) for s in dataset.SPLITS}
        for patient in read_patients(source, data):
            split = split_of(patient.patient_id, seed, data.split)
            record, cut = encode(patient, ids, sex_ids, state_ids, data)
            truncated += cut
            positives[split] += record["endpoint"]
            unknown += record["tokens"].count(dataset.UNK)
            files[split].write(json.dumps(record) + "\n")
    (out / "vocab.json").write_text(json.dumps(vocab.__dict__, indent=1) + "\n")
    return {
        "source": str(source),
        "patients": {s: per_split[s] for s in dataset.SPLITS},
        "positives": {s: positives[s] for s in dataset.SPLITS},
        "vocabulary": {"tokens": len(tokens), **Counter(vocab.kinds)},
        "unknown_positions": unknown,
        "truncated_patients": truncated, "max_length": data.max_length, "truncation": data.truncation,
        "index_date": data.index_date,
        **report.summary(),
        "files": {name: repro.sha256_file(out / name) for name in dataset.FILES},
    }


def prepare(cfg: ExMedBertConfig, args: argparse.Namespace | None = None) -> Path:
    out = Path(cfg.paths.prepared)
    if abs(sum(cfg.data.split) - 1.0) > 1e-9:
        raise ConfigError(f"data.split {list(cfg.data.split)} must sum to 1", "data.split")
    with atomic.atomic_dir(out) as tmp:
        if cfg.data.source == "synthetic":
            families = synthetic.code_families(cfg.seed)
            patients = synthetic.synthetic_patients(cfg.data.synthetic_patients, cfg.seed, families,
                                                     tuple(cfg.data.synthetic_visits))
            source = synthetic.write_patients(tmp / "source" / "patients.json", patients)
            synthetic.write_clinvec(tmp / "source" / "clinvec", families, cfg.data.novel_code_probability, cfg.seed)
        else:
            if not cfg.data.patients:
                raise ConfigError("data.patients is empty: set it to the patients JSON file for data.source=json",
                                  "data.patients")
            source = Path(cfg.data.patients)
        summary = convert(source, tmp, cfg.data, cfg.seed)
        if cfg.data.source == "synthetic":
            summary["source"] = str(out / "source" / "patients.json")
        atomic.write_json(tmp / "summary.json", summary)
    print(json.dumps({k: summary[k] for k in ("patients", "positives", "vocabulary", "truncated_patients",
                                              "dropped_codes", "dropped_dates", "after_index")}))
    retired = summary["retired_icd"]["count"]
    if retired:
        print(f"{retired} ICD-10-CM codes absent from the bundled table handled by data.retired_icd="
              f"{cfg.data.retired_icd}; the most common are in {out / 'summary.json'}")
    return out
