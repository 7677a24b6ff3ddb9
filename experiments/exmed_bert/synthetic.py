"""Synthetic patients in the import format and synthetic ClinVec files in ClinVec's layout.

Planted signal. Codes come from code families: ICD-10-CM categories drawn from the real table (up to
six billable codes each), ATC chemical subgroups (level 4, four substances each) and CPT codes. A
third of the ICD and ATC families are risk families. A patient is at risk with probability 0.35; an
at-risk patient draws half of its diagnoses and drugs from risk families, others 5 %. The endpoint
is the risk flag flipped with probability 0.1, and the length of stay grows with the number of risk
codes, so PLOS pretraining sees the same structure.

Index date: each patient's `index_date` follows the history visits, and one or two visits come on or
after it; a patient with the endpoint gets an acute myocardial infarction code (I21) there, the
outcome itself. With `data.index_date: field` those visits never reach the model; with `none` the
endpoint leaks into the input, as it would on a real cohort without an index date.

ClinVec twin: each family has a random direction, risk families also share one risk direction, and a
code's vector is its family's plus noise; families (ICD categories, ATC levels) have rows too. A
share `novel_code_probability` of the codes is left out of ClinVec, so they must take an ancestor's
vector. Many codes are rare, so a model that knows the families from ClinVec has an edge over one
that must learn every code from the endpoint, which is what the comparison is meant to show.
"""

import json
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import simple_icd_10_cm as icd

from experiments.exmed_bert import codes
from medrepro import atomic

DIM = 128
STATES = ("CA", "FL", "IL", "NY", "PA", "TX")
OUTCOME_CATEGORY = "I21"  # acute myocardial infarction: the synthetic endpoint, recorded after the index date
ATC_GROUPS = "ABCDGHJLMNPRSV"


def _icd_families(rng: np.random.Generator, n: int) -> list[list[str]]:
    categories = [c for c in icd.get_all_codes(True) if icd.is_category(c)]
    families = []
    for i in rng.permutation(len(categories)):
        leaves = [d for d in icd.get_descendants(categories[i]) if icd.is_leaf(d)]
        if len(leaves) >= 4:
            families.append(leaves[:6])
        if len(families) == n:
            return families
    raise AssertionError("the ICD-10-CM table has too few categories")


def _atc_families(rng: np.random.Generator, n: int) -> list[list[str]]:
    families, seen = [], set()
    while len(families) < n:
        group = (ATC_GROUPS[rng.integers(len(ATC_GROUPS))] + f"{rng.integers(1, 99):02d}"
                 + "".join(chr(65 + x) for x in rng.integers(0, 26, 2)))
        if group not in seen:
            seen.add(group)
            families.append([f"{group}{k:02d}" for k in range(1, 5)])
    return families


def code_families(seed: int, n_icd: int = 24, n_atc: int = 12, n_cpt: int = 30) -> dict[str, list[list[str]]]:
    rng = np.random.default_rng(seed)
    cpt = sorted({f"{x:05d}" for x in rng.integers(10000, 99999, n_cpt)})
    return {"icd10cm": _icd_families(rng, n_icd), "atc": _atc_families(rng, n_atc), "cpt": [[c] for c in cpt]}


def _is_risk(index: int) -> bool:
    return index % 3 == 0


def _draw(rng: np.random.Generator, families: list[list[str]], risky: bool) -> str:
    pool = [f for i, f in enumerate(families) if _is_risk(i) == risky]
    family = pool[rng.integers(len(pool))]
    # Zipf-like within a family: the first codes are common, the last are rare.
    weights = 1.0 / np.arange(1, len(family) + 1)
    return family[rng.choice(len(family), p=weights / weights.sum())]


def synthetic_patients(n: int, seed: int, families: dict[str, list[list[str]]],
                       visits: tuple[int, int] = (3, 8)) -> list[dict]:
    rng = np.random.default_rng(seed + 1)
    outcome_codes = [d for d in icd.get_descendants(OUTCOME_CATEGORY) if icd.is_leaf(d)]
    patients = []
    for i in range(n):
        at_risk = bool(rng.random() < 0.35)
        share = 0.5 if at_risk else 0.05
        day = date(2015, 1, 1) + timedelta(days=int(rng.integers(0, 5 * 365)))
        record: dict = {"patient_id": f"P{i:06d}", "birth_year": int(rng.integers(1930, 2001)),
                        "sex": "FM"[rng.integers(2)], "state": STATES[rng.integers(len(STATES))],
                        "diagnoses": [], "prescriptions": [], "procedures": []}
        risk_codes = 0
        for _ in range(int(rng.integers(visits[0], visits[1] + 1))):
            for field, kind, count in (("diagnoses", "icd10cm", rng.integers(1, 4)),
                                       ("prescriptions", "atc", rng.integers(0, 3)),
                                       ("procedures", "cpt", rng.integers(0, 2))):
                for _ in range(int(count)):
                    risky = kind != "cpt" and bool(rng.random() < share)
                    risk_codes += risky
                    record[field].append({"code": _draw(rng, families[kind], risky) if kind != "cpt"
                                          else families["cpt"][rng.integers(len(families["cpt"]))][0],
                                          "date": day.isoformat()})
            day += timedelta(days=int(rng.integers(7, 120)))
        record["endpoint"] = int(at_risk != bool(rng.random() < 0.1))
        record["index_date"] = day.isoformat()
        for _ in range(int(rng.integers(1, 3))):
            record["diagnoses"].append({"code": outcome_codes[rng.integers(len(outcome_codes))]
                                        if record["endpoint"] else _draw(rng, families["icd10cm"], False),
                                        "date": day.isoformat()})
            day += timedelta(days=int(rng.integers(1, 60)))
        record["length_of_stay"] = float(2 + 1.5 * risk_codes + rng.poisson(2))
        patients.append(record)
    return patients


def write_patients(path: Path, patients: list[dict]) -> Path:
    atomic.write_text(path, "[\n" + ",\n".join(json.dumps(p) for p in patients) + "\n]\n")
    return path


def write_clinvec(directory: Path, families: dict[str, list[list[str]]], novel_probability: float,
                  seed: int) -> Path:
    """ClinVec_{icd10cm,atc,cpt}.csv in the release's layout (a header of 128 names, then rows of
    node_index and 128 values: `clinvec`'s docstring) and the tab-separated ClinGraph_nodes.csv that
    joins them to `{code}:{vocab}` ids; one phecode node and file that no patient uses, as in the release."""
    rng = np.random.default_rng(seed + 2)
    risk_direction = rng.normal(size=DIM)
    rows: dict[str, list[tuple[str, np.ndarray]]] = {"icd10cm": [], "atc": [], "cpt": [], "phecode": []}
    for kind, fams in families.items():
        for i, family in enumerate(fams):
            centre = rng.normal(size=DIM) + (2.0 * risk_direction if _is_risk(i) and kind != "cpt" else 0.0)
            parents = sorted({a for code in family for a in codes.ancestors(kind, code)})
            rows[kind] += [(p, centre + 0.3 * rng.normal(size=DIM)) for p in parents]
            rows[kind] += [(c, centre + 0.3 * rng.normal(size=DIM)) for c in family
                           if rng.random() >= novel_probability]
    rows["phecode"].append(("250.2", rng.normal(size=DIM)))
    nodes, index = ["node_id\tnode_name\tntype\tnode_index"], 0
    for kind, entries in rows.items():
        lines = [",".join(map(str, range(DIM)))]
        for code, vector in entries:
            nodes.append(f"{code}:{kind}\t{code} (synthetic)\t{kind.upper()}\t{index}")
            lines.append(",".join([str(index), *(f"{v:.6f}" for v in vector)]))
            index += 1
        atomic.write_text(directory / f"ClinVec_{kind}.csv", "\n".join(lines) + "\n")
    atomic.write_text(directory / "ClinGraph_nodes.csv", "\n".join(nodes) + "\n")
    return directory
