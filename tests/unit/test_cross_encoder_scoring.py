"""Linking scores, intervals by document, trivial pair baselines, the Platt-folded export, and the
contradictory-label rule."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, brier_score_loss, f1_score, roc_auc_score
from transformers import BertConfig, BertForSequenceClassification

from experiments.cross_encoder.config import MiningConfig
from experiments.cross_encoder.export import fold_platt
from experiments.cross_encoder.mining import TypePools, draw_negatives
from experiments.cross_encoder.records import Concept, MentionRecord
from experiments.cross_encoder.scoring import (
    Candidates,
    f1_by_document,
    fit_retrieval_weight,
    linking_accuracy,
    pair_baselines,
)
from medrepro.calibration import Scaler, sigmoid
from medrepro.errors import DataError


def candidates(cross: list[list[float]], bi: list[list[float]], gold: list[int],
               documents: np.ndarray | None = None) -> Candidates:
    """Candidates 0..k-1 for every mention; each mention its own document unless `documents` says."""
    concepts = np.tile(np.arange(len(cross[0])), (len(cross), 1))
    return Candidates(np.arange(len(cross)), np.arange(len(cross)) if documents is None else documents, concepts,
                      np.array(bi, dtype=float), np.array(cross, dtype=float), np.array(gold))


def test_standardised_cosine_puts_tiny_cosine_gaps_on_the_logit_scale():
    # Cosines 1e-6 apart (an untrained encoder) still order the candidates once standardised.
    c = candidates([[0.0, 0.0, 0.0]], [[1 - 2e-6, 1 - 1e-6, 1.0]], [2])
    z = c.standardised_bi()[0]
    assert z[2] > z[1] > z[0] and abs(z.mean()) < 1e-9 and z.std() == pytest.approx(1.0)
    assert c.hits(c.combined(1.0))[0, 0] and not c.hits(c.combined(0.0))[0, 0]


def test_retrieval_weight_is_chosen_where_it_helps_and_zero_when_the_cross_encoder_is_right():
    # Mention 0: the cross-encoder is right, the retriever wrong; mention 1: the cross-encoder is
    # undecided and the retriever right. Only a middling weight gets both.
    c = candidates([[0.0, 3.0], [0.0, 0.0]], [[0.9, 0.1], [0.1, 0.9]], [1, 1])
    w = fit_retrieval_weight(c)
    assert 0 < w < 3 and c.hits(c.combined(w))[:, 0].all()
    right = candidates([[0.0, 3.0], [3.0, 0.0]], [[0.9, 0.1], [0.1, 0.9]], [1, 0])
    assert fit_retrieval_weight(right) == 0.0


def test_linking_accuracy_reports_paired_differences():
    rng = np.random.default_rng(0)
    n, k = 400, 5
    gold = rng.integers(0, k, n)
    bi = rng.normal(size=(n, k))
    cross = rng.normal(size=(n, k))
    cross[np.arange(n), gold] += 3.0  # the cross-encoder mostly finds the gold concept
    c = candidates(cross.tolist(), bi.tolist(), gold.tolist())
    m = linking_accuracy(c, 0.0, 300, 0.05, 0)
    assert m["cross_only_acc_at_1"] == m["reranked_acc_at_1"] > m["biencoder_acc_at_1"]
    diff = m["reranked_acc_at_1"] - m["biencoder_acc_at_1"]
    assert m["reranked_minus_biencoder"] == pytest.approx(diff)
    assert 0 < m["reranked_minus_biencoder_ci_low"] < diff < m["reranked_minus_biencoder_ci_high"]
    assert m["recall_at_5"] == 1.0


def width(low: float, high: float) -> float:
    return high - low


def test_linking_intervals_resample_documents_not_mentions():
    # 40 abstracts of 10 mentions: the cross-encoder is right on every mention of an abstract or on
    # none (its topic decides), the retriever (its first candidate) on none. Mentions of one abstract
    # stand or fall together.
    rng = np.random.default_rng(2)
    documents = np.repeat([str(pmid) for pmid in range(28_000_000, 28_000_040)], 10)
    right = np.repeat(rng.random(40) < 0.5, 10)
    cross = np.where(right[:, None], [[0.0, 3.0]], [[3.0, 0.0]]).tolist()
    bi, gold = np.tile([[1.0, 0.0]], (400, 1)).tolist(), [1] * 400
    by_document = linking_accuracy(candidates(cross, bi, gold, documents), 0.0, 400, 0.05, 0)
    by_mention = linking_accuracy(candidates(cross, bi, gold), 0.0, 400, 0.05, 0)
    assert by_document["documents"] == 40 and by_document["mentions"] == 400 and by_mention["documents"] == 400
    for key in ("reranked_acc_at_1", "reranked_minus_biencoder"):
        assert by_document[key] == by_mention[key] == right.mean()
        # Ten perfectly correlated mentions carry the information of one: about √10 times wider.
        assert width(by_document[f"{key}_ci_low"], by_document[f"{key}_ci_high"]) > 2 * width(
            by_mention[f"{key}_ci_low"], by_mention[f"{key}_ci_high"])
    # A subset (the ambiguous mentions) keeps each mention's document.
    subset = candidates(cross, bi, gold, documents).subset(np.arange(400) % 10 < 3)
    assert linking_accuracy(subset, 0.0, 50, 0.05, 0)["documents"] == 40


def test_f1_by_document_resamples_documents_not_mentions_or_pairs():
    rng = np.random.default_rng(1)
    # 30 documents of 6 mentions of 9 pairs (one positive); whole documents are right or wrong.
    mentions = np.repeat(np.arange(180), 9)
    documents = mentions // 6
    labels = np.tile([1] + [0] * 8, 180)
    document_right = rng.random(30) < 0.6
    predicted = np.where(document_right[documents], labels == 1, labels == 0)
    interval = f1_by_document(labels, predicted, documents, 400, 0.05, 0)
    assert interval.estimate == pytest.approx(f1_score(labels, predicted))
    # Resampling the 180 mentions, or the 1,620 pairs, as if independent gives narrower, overconfident intervals.
    by_mention = f1_by_document(labels, predicted, mentions, 400, 0.05, 0)
    by_pair = f1_by_document(labels, predicted, np.arange(len(labels)), 400, 0.05, 0)
    assert width(interval.low, interval.high) > 1.5 * width(by_mention.low, by_mention.high)
    assert width(by_mention.low, by_mention.high) > width(by_pair.low, by_pair.high)


def test_pair_baselines_are_what_a_scorer_that_learned_nothing_gets():
    labels = np.tile([1] + [0] * 7, 50)  # positive rate 1/8, as the mined pairs
    p = labels.mean()
    baselines = pair_baselines(labels)
    assert baselines["baseline/all_positive/f1"] == pytest.approx(f1_score(labels, np.ones_like(labels)))
    assert baselines["baseline/all_positive/f1"] == pytest.approx(2 * p / (1 + p))
    constant = np.full(len(labels), p)
    assert baselines["baseline/prevalence/pr_auc"] == pytest.approx(average_precision_score(labels, constant))
    assert baselines["baseline/prevalence/brier"] == pytest.approx(brier_score_loss(labels, constant))
    assert roc_auc_score(labels, constant) == 0.5  # implicit, not reported


def test_negatives_shown_under_a_gold_name_are_never_drawn():
    # Concepts 1 and 2 are called "cold" like the gold concept 0: neither may become a negative.
    names = ["cold", "cold", "Cold", "fever", "cough", "rash", "nausea", "edema"]
    concepts = [Concept(f"C9{i:06d}", name, (name,), ("T047",)) for i, name in enumerate(names)]
    pools = TypePools(concepts)
    cfg = MiningConfig(hard_per_positive=0, type_per_positive=3, random_per_positive=1)
    folded = [c.preferred.casefold() for c in concepts]
    for seed in range(20):
        _, typed, rand = draw_negatives(0, [], pools, len(concepts), cfg, np.random.default_rng(seed),
                                        lambda c: folded[c] == "cold")
        assert not {1, 2} & {*typed, *rand} and len(typed) == 3 and len(rand) == 1


def tiny_classifier() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=1)
    return BertForSequenceClassification(config).eval()


def test_folding_platt_into_the_head_gives_calibrated_probabilities(caplog):
    model = tiny_classifier()
    ids = torch.randint(0, 50, (8, 10))
    with torch.inference_mode():
        raw = model(input_ids=ids).logits[:, 0].numpy()
        folded = fold_platt(model, 2.5, -1.25)(input_ids=ids).logits[:, 0].numpy()
    np.testing.assert_allclose(sigmoid(folded), Scaler("platt", 2.5, -1.25)(raw), atol=1e-6)
    with torch.inference_mode():  # the original is untouched
        np.testing.assert_array_equal(model(input_ids=ids).logits[:, 0].numpy(), raw)
    with caplog.at_level("WARNING"):
        fold_platt(model, -0.5, 0.0)
    assert "Platt slope" in caplog.text


def test_prepare_stops_without_linkable_train_mentions_and_warns_about_empty_splits(caplog):
    from experiments.cross_encoder.prepare import _check_linkable

    def record(split: str, gold: str | None) -> MentionRecord:
        return MentionRecord(split, "1", 0, 3, "ARF", ("T047",), "C0000001", gold, "", "was seen")

    report = {"missing_mentions": 2, "by_reason": {"not loaded": 2}}
    docs = {"train": ["doc"], "dev": ["doc"], "test": []}
    with pytest.raises(DataError, match=r"no train mention links to a concept loaded from /umls .*data\.umls_dir"):
        _check_linkable([record("train", None), record("dev", None)], docs, report, "/umls")
    with caplog.at_level("WARNING"):
        _check_linkable([record("train", "C0000001"), record("dev", None)], docs, report, "/umls")
    assert "the test split has no document" in caplog.text
    assert "no dev mention links to a loaded concept" in caplog.text


def test_ambiguous_mentions_are_names_of_concepts_with_different_types():
    from experiments.cross_encoder.scoring import ambiguous

    concepts = [Concept("C1", "Renal insufficiency", ("Renal insufficiency", "RI"), ("T047",)),
                Concept("C2", "Renal imaging", ("Renal imaging", "RI"), ("T061",)),
                Concept("C3", "Renal injury", ("Renal injury", "RIN"), ("T037",)),
                Concept("C4", "Renal infarction", ("Renal infarction", "RIN"), ("T037",))]
    # "ri" across two types: ambiguous; "RIN" only within one type; a name of one concept; no name.
    assert ambiguous(["ri", "RIN", "renal imaging", "RX"], concepts).tolist() == [True, False, False, False]


def test_pair_logits_come_back_in_input_order_and_equal_one_pair_at_a_time(tmp_path, monkeypatch):
    """The fast path (tokenised in chunks, sorted by token count, batches cut to their longest pair)
    gives each pair the logit it gets alone, in the caller's order, across chunk and batch edges, also
    from a tokenizer that pads on the left by default (BERT's positions would shift)."""
    from experiments.cross_encoder import model as cross
    from medrepro.config_sections import TinyBertConfig
    from medrepro.tiny import build_tiny_bert

    rng = np.random.default_rng(3)
    words = ["renal", "failure", "acute", "ri", "imaging", "patients", "with", "the", "[", "]", "(", ")"]
    pairs = [(" ".join(rng.choice(words, rng.integers(1, 30))), " ".join(rng.choice(words, rng.integers(1, 12))))
             for _ in range(23)]
    directory = build_tiny_bert(tmp_path / "bert", [a + " " + b for a, b in pairs],
                                TinyBertConfig(hidden_size=16, layers=1, heads=2, intermediate_size=32, dropout=0.0))
    model, tokenizer = cross.load(directory)
    tokenizer.padding_side = "left"
    torch.manual_seed(0)
    torch.nn.init.normal_(model.classifier.weight, std=3.0)  # a fresh head's logits barely differ
    monkeypatch.setattr(cross, "CHUNK_BATCHES", 2)  # 23 pairs in batches of 4: chunks of 8, the last short
    fast = cross.pair_logits(model, tokenizer, pairs, batch_size=4, max_length=24)
    with torch.inference_mode():
        alone = [model(**tokenizer(a, b, truncation=True, max_length=24, return_tensors="pt")).logits[0, 0].item()
                 for a, b in pairs]
    np.testing.assert_allclose(fast, alone, atol=1e-5)
    assert len(set(np.round(fast, 4))) > 10, "the pairs should score differently"
    model.train()
    cross.pair_logits(model, tokenizer, pairs[:3], 4, 24)
    assert model.training
