"""The UMLS-scale index benchmark: its synthetic names carry the structure it claims, recall and the
choice of default are computed right, and every index kind it measures is the one `index` builds."""

import faiss
import numpy as np
import pytest

from experiments.cross_encoder.config import BenchConfig, IndexConfig
from experiments.cross_encoder.index_bench import (
    NAMES_PER_CONCEPT,
    SyntheticNames,
    build,
    choose,
    exact_search,
    index_bench,
    recall,
)
from experiments.cross_encoder.retrieval import build_index


def test_synthetic_names_are_unit_vectors_generated_deterministically_in_blocks():
    names = SyntheticNames(61_000, 48, 8, seed=0)  # two blocks, the second partial
    blocks = list(names.blocks())
    assert [len(b) for b in blocks] == [60_000, 1_000]
    again = np.concatenate(list(SyntheticNames(61_000, 48, 8, seed=0).blocks()))
    assert np.array_equal(np.concatenate(blocks), again)
    assert np.allclose(np.linalg.norm(again, axis=1), 1, atol=1e-5)
    assert not np.array_equal(again, np.concatenate(list(SyntheticNames(61_000, 48, 8, seed=1).blocks())))


def test_a_query_finds_its_own_concept_first_but_not_trivially():
    names = SyntheticNames(9_000, 256, 16, seed=0)
    vectors = np.concatenate(list(names.blocks()))
    queries, concepts = names.queries(300)
    scores = queries @ vectors.T
    top = np.argsort(-scores, axis=1)
    own = (top[:, 0] // NAMES_PER_CONCEPT == concepts).mean()
    assert 0.6 < own < 1.0  # mostly its concept, yet neighbours compete (as in SapBERT space)
    assert abs(float(scores.mean())) < 0.05  # unrelated names are near orthogonal on average


def test_recall_counts_shared_rows_at_both_depths():
    exact = np.tile(np.arange(64), (2, 1))
    found = exact.copy()
    found[1, 0] = 99  # the second query misses its first row: recall@1 0.5, recall@64 (64+63)/128
    assert recall(found, exact) == {"recall_at_1": 0.5, "recall_at_64": pytest.approx(127 / 128)}


def _row(kind: str, names: int, recall64: float, speedup: float, memory: float, rate: float) -> dict:
    return {"kind": kind, "names": names, "recall_at_64": recall64, "speedup": speedup, "memory_mb": memory,
            "queries_per_s": rate}


def test_the_default_is_the_smallest_setting_reaching_both_goals_at_the_largest_size():
    rows = [_row("flat", 10, 1.0, 1.0, 100, 1),
            _row("hnsw", 10, 0.999, 30, 10, 30),  # a smaller size: not considered
            _row("hnsw", 20, 0.995, 12, 120, 12),
            _row("hnsw_fp16", 20, 0.995, 11, 70, 11),
            _row("hnsw_fp16", 20, 0.999, 5, 70, 5),  # too slow
            _row("ivf_fp16", 20, 0.98, 40, 40, 40)]  # recall too low
    assert choose(rows) == rows[3]
    assert choose([r for r in rows if r["kind"] != "hnsw_fp16"]) == rows[2]
    assert choose(rows[:1] + rows[-1:]) is None


@pytest.mark.parametrize(("kind", "expected"), [("hnsw", faiss.IndexHNSWFlat), ("hnsw_fp16", faiss.IndexHNSWSQ),
                                                ("ivf", faiss.IndexIVFFlat),
                                                ("ivf_fp16", faiss.IndexIVFScalarQuantizer)])
def test_each_measured_kind_is_what_the_index_stage_builds(kind, expected):
    names = SyntheticNames(3_000, 32, 8, seed=0)
    index, seconds = build(names, kind, ivf_nlist=16, hnsw_m=8)
    assert type(index) is expected and index.ntotal == 3_000 and seconds > 0
    base, _, storage = kind.partition("_")
    built = build_index(np.concatenate(list(names.blocks())), IndexConfig(kind=base, storage=storage or "float32",
                                                                          ivf_nlist=16, hnsw_m=8))
    assert type(built) is expected


def test_index_bench_rows_cover_every_kind_and_setting(tmp_path):
    cfg = BenchConfig(index_sizes=[2_000, 4_000], index_queries=50, index_dim=32, index_latent_dim=8,
                      hnsw_ef_search=[16, 64], ivf_nprobe=[1, 8], approximate_max_names=2_000)
    result = index_bench(cfg, seed=0, hnsw_m=8, workdir=tmp_path, log=lambda line: None)
    rows = result["rows"]
    # Exact search at both sizes; the approximate kinds only up to approximate_max_names.
    assert [(r["names"], r["kind"]) for r in rows if r["kind"] == "flat"] == [(2_000, "flat"), (4_000, "flat")]
    assert {r["names"] for r in rows if r["kind"] != "flat"} == {2_000}
    assert len(rows) == 2 + 4 * 2
    for r in rows:
        assert 0 <= r["recall_at_1"] <= 1 and 0 <= r["recall_at_64"] <= 1 and r["memory_mb"] > 0
    # fp16 storage is about half of float32's; a larger nprobe never loses recall.
    memory = {r["kind"]: r["memory_mb"] for r in rows if r["names"] == 2_000}
    assert memory["ivf_fp16"] < 0.7 * memory["ivf"]
    ivf = [r["recall_at_64"] for r in rows if r["kind"] == "ivf"]
    assert ivf[1] >= ivf[0]
    assert list(tmp_path.iterdir()) == []  # the written indexes are cleaned up


def test_exact_search_over_blocks_equals_a_flat_index():
    names = SyntheticNames(130_000, 32, 8, seed=0)  # three blocks: results merged across them
    queries, _ = names.queries(50)
    rows, rate = exact_search(names, queries)
    flat = faiss.IndexFlatIP(32)
    flat.add(np.concatenate(list(names.blocks())))
    assert np.array_equal(rows, flat.search(queries, 64)[1]) and rate > 0
