"""ClinVec: read the release, initialise the code vocabulary from it, resize to the model's width.

The release (Harvard Dataverse doi:10.7910/DVN/Z6H1A8), as mims-harvard/ClinVec's
tutorial/010_download_clingraph_clinvec.ipynb describes and reads it: "Each set of embeddings is
saved as a pandas dataframe where the 128 columns correspond to the dimensions of the embedding and
the row index matches the `node_index` which is described in `ClinGraph_node.csv`"; read with
`df = pd.read_csv("ClinVec_phecode.csv")`, `emb_mat = df.values`, `df['node_index'] = df.index`,
then merged with `pd.read_csv("ClinGraph_nodes.csv", sep='\t')` on `node_index`. So a ClinVec_{vocab}.csv
has a header of 128 names, and each row is its node_index followed by 128 values (one field more than
the header, which pandas takes as the row index). `read_vectors` reads exactly what pandas does there:
that layout, a first header field that is empty (pandas' `to_csv` with its index), a column named
`node_index`, or, with 128 fields throughout, the row number (the tutorial's `df.index`); the join
then checks that the rows land on nodes of the file's vocabulary. ClinGraph_nodes.csv is tab-separated
`node_id, node_name, ntype, node_index`, node_id `{code}:{vocab}` (e.g. `LP14832-7:lnc`; ICD-10-CM codes
keep their dot). Our tokens use the same `{code}:{vocab}` form, so the join is exact.

A code that ClinVec lacks takes the vector of its nearest ancestor that it has (`codes.ancestors`:
the ICD-10-CM table's hierarchy, ATC's five levels; CPT has none), else keeps the model's random
initialisation.

Resizing 128 → hidden size:
  truncate            the first `hidden` columns (hidden <= 128)
  pca                 the top `hidden` principal components of the initialised rows (hidden <= 128)
  learned_projection  the 128-d vectors stay, and the model learns a linear map to hidden size
  pad_smart           the 128 columns, then columns drawn with the per-column spread of the originals
  pad_random          the 128 columns, then small random columns (std 0.02)
  auto                128 → as is; smaller → pca (truncate with fewer rows than components); larger → pad_smart
"""

import argparse
import csv
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.exmed_bert import codes, dataset
from experiments.exmed_bert.config import ExMedBertConfig
from experiments.exmed_bert.model import preset_sizes
from medrepro import atomic
from medrepro.errors import ConfigError, DataError

DIM = 128
NODES = "ClinGraph_nodes.csv"
FRESH, FOUND, ANCESTOR = 0, 1, 2


def read_nodes(directory: Path, vocabularies: list[str]) -> dict[str, int]:
    """node_id → node_index for the given vocabularies."""
    path = directory / NODES
    if not path.is_file():
        raise DataError(f"{path} not found: clinvec.directory must hold ClinVec's {NODES} and ClinVec_<vocab>.csv")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = {"node_id", "node_index"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{path}: no column {sorted(missing)} in the header {reader.fieldnames}; expected the "
                            "tab-separated node_id, node_name, ntype, node_index")
        wanted = {f":{v}" for v in vocabularies}
        return {row["node_id"]: int(row["node_index"]) for row in reader
                if row["node_id"][row["node_id"].rfind(":"):] in wanted}


def _index_column(header: list[str], first_row: list[str], path: Path) -> int | None:
    """Which field of a row holds node_index (None: the row number), as pandas' read_csv decides."""
    if len(first_row) == len(header) + 1 == DIM + 1:
        return 0  # the release: the header names the 128 values only
    if len(header) == len(first_row) == DIM + 1:
        if "node_index" in header:
            return header.index("node_index")
        if header[0] in ("", "Unnamed: 0"):
            return 0
    if len(header) == len(first_row) == DIM:
        return None
    raise DataError(f"{path}: expected ClinVec's layout, a header of {DIM} names and rows of node_index and {DIM} "
                    f"values; found {len(header)} header fields and {len(first_row)} fields in the first row")


def read_vectors(directory: Path, vocabulary: str) -> dict[int, np.ndarray]:
    """node_index → 128-d vector of ClinVec_{vocabulary}.csv (see the module's docstring for the layout)."""
    path = directory / f"ClinVec_{vocabulary}.csv"
    if not path.is_file():
        raise DataError(f"{path} not found: add it to clinvec.directory or drop {vocabulary} from clinvec.vocabularies")
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        header, first_row = next(rows, []), next(rows, [])
    at = _index_column(header, first_row, path)
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2, dtype=np.float64)
    except ValueError as e:
        raise DataError(f"{path}: not numeric: {e}") from None
    if at is None:
        return dict(enumerate(table))
    return {int(i): row for i, row in zip(table[:, at], np.delete(table, at, axis=1), strict=True)}


@dataclass
class Lookup:
    vectors: np.ndarray  # (tokens, 128); zero where fresh
    source: np.ndarray  # FRESH, FOUND or ANCESTOR per token
    level: np.ndarray  # ancestor steps up (1 = parent), 0 otherwise


def lookup(tokens: list[str], directory: Path, vocabularies: list[str], hierarchical: bool) -> Lookup:
    """Each `{code}:{vocab}` token's ClinVec vector, directly or through its nearest ancestor."""
    nodes = read_nodes(directory, vocabularies)
    table: dict[str, np.ndarray] = {}
    for vocabulary in vocabularies:
        by_index = read_vectors(directory, vocabulary)
        joined = {node: by_index[i] for node, i in nodes.items() if node.endswith(f":{vocabulary}") and i in by_index}
        if len(joined) < len(by_index) / 2:
            raise DataError(f"{directory / f'ClinVec_{vocabulary}.csv'}: only {len(joined)} of its {len(by_index)} "
                            f"rows are {vocabulary} nodes of {NODES}: its row index must be ClinGraph's node_index "
                            "(the release's layout); use the files of one ClinVec release")
        table.update(joined)
    n = len(tokens)
    out = Lookup(np.zeros((n, DIM)), np.zeros(n, dtype=np.int8), np.zeros(n, dtype=np.int8))
    for i, token in enumerate(tokens):
        code, _, vocabulary = token.rpartition(":")
        if vocabulary not in vocabularies:
            continue  # specials, and vocabularies not asked for
        chain = [code, *(codes.ancestors(vocabulary, code) if hierarchical else [])]
        for level, candidate in enumerate(chain):
            vector = table.get(f"{candidate}:{vocabulary}")
            if vector is not None:
                out.vectors[i], out.source[i], out.level[i] = vector, FOUND if level == 0 else ANCESTOR, level
                break
    return out


def check_coverage(report: dict[str, dict], floor: float) -> None:
    """Stop when fewer than `floor` of the codes have a ClinVec vector (directly or through an ancestor)."""
    tokens = sum(v["tokens"] for v in report.values())
    fresh = sum(v["fresh"] for v in report.values())
    share = (tokens - fresh) / tokens if tokens else 0.0
    if share < floor:
        each = ", ".join(f"{k} {(v['tokens'] - v['fresh']) / v['tokens']:.0%}"
                         for k, v in report.items() if v["tokens"])
        raise DataError(f"ClinVec covers {share:.0%} of the {tokens} codes ({each or 'none of the vocabularies'}), "
                        f"below clinvec.min_coverage {floor:.0%}: check clinvec.directory and clinvec.vocabularies, "
                        "or lower clinvec.min_coverage to accept mostly random initialisation")


def coverage(tokens: list[str], found: Lookup) -> dict[str, dict]:
    """Per vocabulary: tokens, found, found through an ancestor (by level), initialised fresh."""
    report: dict[str, dict] = {}
    for i, token in enumerate(tokens[len(dataset.SPECIALS):], start=len(dataset.SPECIALS)):
        entry = report.setdefault(token.rpartition(":")[2], {"tokens": 0, "found": 0, "ancestor": Counter(),
                                                             "fresh": 0})
        entry["tokens"] += 1
        if found.source[i] == FOUND:
            entry["found"] += 1
        elif found.source[i] == ANCESTOR:
            entry["ancestor"][f"level_{found.level[i]}"] += 1
        else:
            entry["fresh"] += 1
    return {k: {**v, "ancestor": dict(sorted(v["ancestor"].items()))} for k, v in sorted(report.items())}


def resolve_method(method: str, hidden: int, rows: int) -> str:
    if method != "auto":
        return method
    if hidden == DIM:
        return "truncate"
    if hidden < DIM:
        return "pca" if rows >= hidden else "truncate"
    return "pad_smart"


def resize(vectors: np.ndarray, hidden: int, method: str, seed: int) -> np.ndarray:
    """(n, 128) → (n, hidden); `learned_projection` keeps (n, 128) for the model's projection."""
    n, dim = vectors.shape
    rng = np.random.default_rng(seed)
    if method == "learned_projection":
        return vectors.copy()
    if method in ("truncate", "pca") and hidden > dim:
        raise ConfigError(f"clinvec.resize={method} cannot widen {dim} → {hidden}: use pad_smart, pad_random, "
                          "learned_projection or auto", "clinvec.resize")
    if method in ("pad_smart", "pad_random") and hidden < dim:
        raise ConfigError(f"clinvec.resize={method} cannot narrow {dim} → {hidden}: use truncate, pca, "
                          "learned_projection or auto", "clinvec.resize")
    if method == "truncate":
        return vectors[:, :hidden].copy()
    if method == "pca":
        if n < hidden:
            raise ConfigError(f"clinvec.resize=pca needs at least {hidden} initialised codes, found {n}: use "
                              "truncate or auto", "clinvec.resize")
        centred = vectors - vectors.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        # Sign fixed by the largest entry of each component, so the result does not depend on the LAPACK build.
        signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])
        return centred @ (vt[:hidden] * signs[:hidden, None]).T
    if method == "pad_smart":
        extra = rng.normal(size=(n, hidden - dim)) * rng.choice(vectors.std(axis=0), size=hidden - dim)
        return np.concatenate([vectors, extra], axis=1)
    if method == "pad_random":
        return np.concatenate([vectors, 0.02 * rng.normal(size=(n, hidden - dim))], axis=1)
    raise ConfigError(f"unknown clinvec.resize {method!r}", "clinvec.resize")


def source_directory(cfg: ExMedBertConfig) -> Path:
    return Path(cfg.clinvec.directory or Path(cfg.paths.prepared) / "source" / "clinvec")


def clinvec_stage(cfg: ExMedBertConfig, args: argparse.Namespace | None = None) -> Path:
    """vectors.npz (`vectors`, `source`, `level`) and coverage.json into paths.clinvec."""
    vocab = dataset.read_vocab(cfg.paths.prepared)
    found = lookup(vocab.tokens, source_directory(cfg), cfg.clinvec.vocabularies, cfg.clinvec.hierarchical)
    report = coverage(vocab.tokens, found)
    check_coverage(report, cfg.clinvec.min_coverage)
    rows = found.source > 0
    hidden = preset_sizes(cfg.model)["hidden_size"]
    method = resolve_method(cfg.clinvec.resize, hidden, int(rows.sum()))
    vectors = np.zeros((len(vocab.tokens), DIM if method == "learned_projection" else hidden))
    if rows.any():
        vectors[rows] = resize(found.vectors[rows], hidden, method, cfg.seed)
    report = {"directory": str(source_directory(cfg)), "hierarchical": cfg.clinvec.hierarchical,
              "resize": {"asked": cfg.clinvec.resize, "used": method, "from": DIM, "to": hidden},
              "vocabularies": report}
    out = Path(cfg.paths.clinvec)
    with atomic.atomic_dir(out) as tmp:
        with open(tmp / "vectors.npz", "wb") as f:
            np.savez(f, vectors=vectors.astype(np.float32), source=found.source, level=found.level)
        atomic.write_json(tmp / "coverage.json", report)
    print(json.dumps(report))
    return out


def read_initialisation(directory: str | Path) -> tuple[np.ndarray, np.ndarray, str]:
    """(vectors, initialised mask, resize method) from the clinvec stage's output."""
    path = Path(directory) / "vectors.npz"
    if not path.is_file():
        raise DataError(f"{path} not found: run `medrepro exmed_bert clinvec` first")
    with np.load(path) as data:
        vectors, source = data["vectors"], data["source"]
    method = json.loads((Path(directory) / "coverage.json").read_text())["resize"]["used"]
    return vectors, source > 0, method
