"""The UMLS-scale index benchmark: its synthetic names carry the structure it claims, recall and the
choice of default are computed right, and every index kind it measures is the one `index` builds."""

import faiss
import numpy as np
import pytest

from experiments.cross_encoder.config import BenchConfig, IndexConfig, index_config
from experiments.cross_encoder.index_bench import (
    NAMES_PER_CONCEPT,
    SyntheticNames,
    build,
    choose,
    exact_search,
    index_bench,
    recall,
)
from experiments.cross_encoder.retrieval import build_index, searched_index, set_search, variance_kept
from medrepro.errors import ConfigError


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


def _row(kind: str, names: int, recall64: float, speedup: float, memory: float, rate: float,
         slowest: float | None = None) -> dict:
    return {"kind": kind, "names": names, "recall_at_64": recall64, "speedup": speedup, "memory_mb": memory,
            "queries_per_s": rate, "speedup_min": speedup if slowest is None else slowest}


def test_the_default_is_the_smallest_setting_reaching_both_goals_in_every_round_at_the_largest_size():
    rows = [_row("flat", 10, 1.0, 1.0, 100, 1),
            _row("hnsw", 10, 0.999, 30, 10, 30),  # a smaller size: not considered
            _row("hnsw", 20, 0.995, 12, 120, 12),
            _row("hnsw_fp16", 20, 0.995, 11, 70, 11),
            _row("hnsw_fp16", 20, 0.999, 5, 70, 5),  # too slow
            _row("hnsw_sq8_refine", 20, 0.995, 14, 50, 14, slowest=9.5),  # fast enough in the median only
            _row("ivf_fp16", 20, 0.98, 40, 40, 40)]  # recall too low
    assert choose(rows) == rows[3]
    assert choose([r for r in rows if r["kind"] != "hnsw_fp16"]) == rows[2]
    assert choose(rows[:1] + rows[-1:]) is None


@pytest.mark.parametrize(("kind", "expected", "inner"), [
    ("hnsw", faiss.IndexHNSWFlat, None), ("hnsw_fp16", faiss.IndexHNSWSQ, None),
    ("ivf", faiss.IndexIVFFlat, None), ("ivf_fp16", faiss.IndexIVFScalarQuantizer, None),
    ("hnsw_sq8_refine", faiss.IndexRefine, faiss.IndexHNSWSQ), ("ivf_refine", faiss.IndexRefine, faiss.IndexIVFFlat),
    ("ivf_pca16_refine", faiss.IndexRefine, faiss.IndexIVFFlat)])
def test_each_measured_kind_is_what_the_index_stage_builds(kind, expected, inner):
    names = SyntheticNames(3_000, 32, 8, seed=0)
    index, seconds = build(names, kind, ivf_nlist=16, hnsw_m=8)
    assert type(index) is expected and index.ntotal == 3_000 and seconds > 0
    cfg = index_config(kind)
    cfg.ivf_nlist, cfg.hnsw_m = 16, 8
    built = build_index(np.concatenate(list(names.blocks())), cfg)
    assert type(built) is expected
    if inner is not None:
        assert type(searched_index(built)) is inner and searched_index(built).d == (cfg.reduce_dim or 32)
        refine = faiss.downcast_index(built.refine_index)  # on every dimension, in fp16
        assert refine.sq.qtype == faiss.ScalarQuantizer.QT_fp16 and refine.d == 32


def test_refine_re_ranks_what_8_bit_codes_or_principal_components_rank_loosely():
    names = SyntheticNames(20_000, 64, 16, seed=0)
    vectors = np.concatenate(list(names.blocks()))
    queries, _ = names.queries(100)
    exact, _ = exact_search(names.blocks(), queries)
    plain = build_index(vectors, IndexConfig(kind="hnsw", storage="sq8", hnsw_m=16))
    refined = build_index(vectors, IndexConfig(kind="hnsw", storage="sq8", hnsw_m=16, refine="fp16"))
    for index in (plain, refined):
        set_search(index, ef_search=256, nprobe=1, refine_factor=4)
    assert searched_index(refined).hnsw.efSearch == 256 and refined.k_factor == 4
    loose, tight = (recall(index.search(queries, 64)[1], exact)["recall_at_64"] for index in (plain, refined))
    assert tight > loose and tight > 0.97
    # The names lie near 16 dimensions: IVF over their first 24 principal components, re-ranked on all
    # 64, finds what exact search finds; the same IVF without the re-ranking orders them loosely.
    pca = build_index(vectors, IndexConfig(kind="ivf", reduce_dim=24, ivf_nlist=64))
    pca_refined = build_index(vectors, IndexConfig(kind="ivf", reduce_dim=24, ivf_nlist=64, refine="fp16"))
    for index in (pca, pca_refined):
        set_search(index, ef_search=1, nprobe=16, refine_factor=4)
    assert searched_index(pca_refined).nprobe == 16 and searched_index(pca_refined).d == 24
    # 24 components of names spread over 16 latent directions plus isotropic noise: most, not all, variance.
    assert 0.7 < variance_kept(pca_refined) < 0.99 and variance_kept(refined) is None
    assert variance_kept(build_index(vectors, IndexConfig(kind="ivf", reduce_dim=4, ivf_nlist=64))) < 0.6
    loose, tight = (recall(index.search(queries, 64)[1], exact)["recall_at_64"] for index in (pca, pca_refined))
    assert tight > loose and tight > 0.97


def test_benchmark_kind_names():
    assert index_config("hnsw_sq8_refine") == IndexConfig(kind="hnsw", storage="sq8", refine="fp16")
    assert index_config("ivf") == IndexConfig(kind="ivf")
    assert index_config("ivf_pca128_refine") == IndexConfig(kind="ivf", reduce_dim=128, refine="fp16")
    for bad in ("flat", "hnsw_fp8", "ivf_fp16_sq8", "hnsw_refine_fp16", "ivf_fp16_pca64", "ivf_pca"):
        with pytest.raises(ValueError, match="index_kinds"):
            index_config(bad)
    for flat in ({"refine": "fp16"}, {"reduce_dim": 64}):
        with pytest.raises(ValueError, match="a flat index is exact"):
            IndexConfig(kind="flat", **flat)
    with pytest.raises(ValueError, match="'hnsw_pca64_refine' keeps as many principal components as index_dim 64"):
        BenchConfig(index_dim=64, index_kinds=["hnsw_pca64_refine"])
    with pytest.raises(ConfigError, match=r"index\.reduce_dim 32 is not below the encoder's width 32"):
        build_index(np.zeros((100, 32), dtype=np.float32), IndexConfig(kind="hnsw", reduce_dim=32))


def test_index_bench_rows_cover_every_kind_and_setting(tmp_path):
    cfg = BenchConfig(index_sizes=[2_000, 4_000], index_queries=50, index_dim=32, index_latent_dim=8,
                      hnsw_ef_search=[16, 64], ivf_nprobe=[1, 8], approximate_max_names=2_000, hnsw_m=8,
                      index_kinds=["hnsw", "hnsw_fp16", "ivf", "ivf_fp16"])
    result = index_bench(cfg, seed=0, workdir=tmp_path, log=lambda line: None)
    rows = result["rows"]
    # Exact search at both sizes; the approximate kinds only up to approximate_max_names.
    assert [(r["names"], r["kind"]) for r in rows if r["kind"] == "flat"] == [(2_000, "flat"), (4_000, "flat")]
    assert {r["names"] for r in rows if r["kind"] != "flat"} == {2_000}
    assert len(rows) == 2 + 4 * 2
    for r in rows:
        assert 0 <= r["recall_at_1"] <= 1 and 0 <= r["recall_at_64"] <= 1 and r["memory_mb"] > 0
    # Every approximate row was timed in each of the interleaved rounds, against that round's exact search.
    for r in rows[1:]:
        if r["kind"] != "flat":
            assert len(r["speedup_rounds"]) == cfg.repeats == result["rounds"]
            assert r["speedup_min"] == min(r["speedup_rounds"]) <= r["speedup"] <= r["speedup_max"]
    # fp16 storage is about half of float32's; a larger nprobe never loses recall.
    memory = {r["kind"]: r["memory_mb"] for r in rows if r["names"] == 2_000}
    assert memory["ivf_fp16"] < 0.7 * memory["ivf"]
    ivf = [r["recall_at_64"] for r in rows if r["kind"] == "ivf"]
    assert ivf[1] >= ivf[0]
    assert list(tmp_path.iterdir()) == []  # the written indexes are cleaned up


def test_exact_search_over_blocks_equals_a_flat_index():
    names = SyntheticNames(130_000, 32, 8, seed=0)  # three blocks: results merged across them
    queries, _ = names.queries(50)
    rows, seconds = exact_search(names.blocks(), queries)
    flat = faiss.IndexFlatIP(32)
    flat.add(np.concatenate(list(names.blocks())))
    assert np.array_equal(rows, flat.search(queries, 64)[1]) and seconds > 0
