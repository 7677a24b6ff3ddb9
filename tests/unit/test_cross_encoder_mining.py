"""Hard-negative mining and the FAISS candidate search, on hand-made concepts and vectors."""

import json

import numpy as np
import pytest

from experiments.cross_encoder.config import IndexConfig, MiningConfig
from experiments.cross_encoder.link import read_spans
from experiments.cross_encoder.mining import TypePools, draw_negatives, hard_candidates
from experiments.cross_encoder.records import Concept
from experiments.cross_encoder.retrieval import (
    NameIndex,
    build_index,
    configure_search,
    first_distinct,
    index_device,
    name_rows,
    recall_at,
)
from medrepro.errors import DataError


def concepts_with_types(types: list[tuple[str, ...]]) -> list[Concept]:
    return [Concept(f"C9{i:06d}", f"concept {i}", (f"concept {i}", f"synonym {i}"), t) for i, t in enumerate(types)]


CONCEPTS = concepts_with_types([("T047",)] * 20 + [("T121",)] * 20 + [("T047", "T191")] * 5)


def test_negatives_never_include_gold_and_are_distinct():
    pools = TypePools(CONCEPTS)
    cfg = MiningConfig(hard_per_positive=5, type_per_positive=3, random_per_positive=4)
    for gold in range(len(CONCEPTS)):
        rng = np.random.default_rng([0, gold])
        hard = [gold, (gold + 1) % 45, (gold + 2) % 45]  # the gold concept is often among the candidates
        picked = draw_negatives(gold, hard, pools, len(CONCEPTS), cfg, rng)
        flat = [c for group in picked for c in group]
        assert gold not in flat
        assert len(flat) == len(set(flat))
        assert [len(g) for g in picked] == [2, 3, 4]


def test_type_negatives_share_a_type_in_same_mode_and_none_in_different_mode():
    pools = TypePools(CONCEPTS)
    for mode in ("same", "different"):
        cfg = MiningConfig(hard_per_positive=0, type_per_positive=4, random_per_positive=0, type_mode=mode)
        for gold in (0, 25, 42):
            _, typed, _ = draw_negatives(gold, [], pools, len(CONCEPTS), cfg, np.random.default_rng(gold))
            assert len(typed) == 4
            for c in typed:
                shares = bool(set(CONCEPTS[c].types) & set(CONCEPTS[gold].types))
                assert shares == (mode == "same"), (mode, gold, c)


def test_negatives_are_keyed_by_the_generator_alone():
    pools = TypePools(CONCEPTS)
    cfg = MiningConfig()
    draws = [draw_negatives(3, [4, 5], pools, len(CONCEPTS), cfg, np.random.default_rng([7, 3])) for _ in range(2)]
    assert draws[0] == draws[1]


def test_type_negatives_stop_when_the_pool_runs_out():
    concepts = concepts_with_types([("T047",), ("T047",), ("T121",)])
    cfg = MiningConfig(hard_per_positive=0, type_per_positive=5, random_per_positive=0)
    _, typed, _ = draw_negatives(0, [], TypePools(concepts), 3, cfg, np.random.default_rng(0))
    assert typed == [1]


def test_hard_candidates_respect_top_k_and_threshold():
    cfg = MiningConfig(hard_top_k=4, hard_threshold=0.85)
    concepts = np.array([9, 3, 7, 1, 5, 2])
    scores = np.array([0.99, 0.90, 0.85, 0.84, 0.95, 0.97], dtype=np.float32)
    assert hard_candidates(concepts, scores, cfg) == [9, 3, 7]  # 0.84 is below; 5 and 2 are past top 4
    padded = np.array([4, -1, -1]), np.array([0.9, -np.inf, -np.inf], dtype=np.float32)
    assert hard_candidates(*padded, cfg) == [4]


def clustered_vectors(n_concepts: int, names_each: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_concepts, dim))
    vectors = np.repeat(centres, names_each, axis=0) + 0.05 * rng.normal(size=(n_concepts * names_each, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), np.repeat(np.arange(n_concepts), names_each)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_every_index_kind_finds_the_nearest_concept(kind):
    vectors, owners = clustered_vectors(300, 3, 16)
    cfg = IndexConfig(kind=kind, ivf_nlist=16, ivf_nprobe=4, gpu=False)
    index = configure_search(build_index(vectors, cfg), cfg)
    concepts = concepts_with_types([("T047",)] * 300)
    names = [f"n{i}" for i in range(len(vectors))]
    found, rows, scores = NameIndex(index, owners, names, concepts).candidates(vectors[::3], 10)
    np.testing.assert_array_equal(found[:, 0], np.arange(300))
    # Each concept appears once per query although it has three names.
    assert all(len(set(row)) == 10 for row in found)
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    assert (owners[rows] == found).all()
    if kind == "ivf":
        assert index.nprobe == 4


def test_the_search_log_names_the_device_and_the_kernel_level_in_force():
    import faiss

    shown = index_device(configure_search(build_index(np.eye(4, dtype=np.float32), IndexConfig(gpu=False)),
                                          IndexConfig(gpu=False)))
    assert shown.startswith(f"CPU with {faiss.SIMDConfig.get_level_name()} kernels"), shown


def test_candidates_pad_when_fewer_concepts_exist():
    vectors, owners = clustered_vectors(3, 2, 8)
    cfg = IndexConfig(gpu=False)
    index = NameIndex(build_index(vectors, cfg), owners, ["x"] * 6, concepts_with_types([()] * 3))
    found, rows, scores = index.candidates(vectors[:1], 5)
    assert found[0, 0] == 0 and sorted(found[0, :3].tolist()) == [0, 1, 2] and (found[0, 3:] == -1).all()
    assert np.isneginf(scores[0, 3:]).all() and (rows[0, 3:] == -1).all()


def test_name_rows_and_recall():
    names, owners = name_rows(CONCEPTS[:2])
    assert names == ["concept 0", "synonym 0", "concept 1", "synonym 1"] and owners.tolist() == [0, 0, 1, 1]
    candidates = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    gold = np.array([1, 6, 0])
    expected = {"recall_at_1": pytest.approx(1 / 3), "recall_at_3": pytest.approx(2 / 3)}
    assert recall_at(gold, candidates, (1, 3)) == expected


def test_link_reads_json_spans_and_rejects_bad_ones(tmp_path):
    good = tmp_path / "in.jsonl"
    good.write_text(json.dumps({"id": "d1", "text": "acute renal failure today", "spans": [[0, 19]]}) + "\n")
    spans = read_spans(good, 4)
    assert [(s.doc, s.start, s.end, s.text) for s in spans] == [("d1", 0, 19, "acute renal failure")]
    assert (spans[0].left, spans[0].right) == ("", "today")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "d1", "text": "short", "spans": [[2, 40]]}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: span \[2, 40\]"):
        read_spans(bad, 4)
    bad.write_text("not json\n")
    with pytest.raises(DataError, match="not a JSON object"):
        read_spans(bad, 4)


def test_link_reads_pubtator_spans(tmp_path):
    text = "Renal failure"
    path = tmp_path / "doc.txt"
    path.write_text(f"123|t|{text}\n123|a|Nothing else.\n123\t0\t13\tRenal failure\tT047\tC0035078\n\n")
    # The offsets index title + " " + abstract, and so does the context.
    assert [(s.doc, s.text, s.right) for s in read_spans(path, 4)] == [("123", "Renal failure", "Nothing else.")]


def test_first_distinct_matches_a_plain_loop():
    rng = np.random.default_rng(0)
    values = rng.integers(-1, 12, size=(200, 30))
    for k in (1, 5, 40):
        got = first_distinct(values, k)
        for row, positions in zip(values, got, strict=True):
            expected, seen = [], set()
            for column, value in enumerate(row):
                if value >= 0 and value not in seen:
                    seen.add(value)
                    expected.append(column)
            expected = expected[:k] + [-1] * (k - len(expected[:k]))
            assert positions.tolist() == expected
