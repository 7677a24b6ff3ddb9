"""ct_clip model and zero-shot: CTViT's token grid, one encoder pass per volume and per prompt set,
upstream's threshold rule and the paper's metrics checked against scikit-learn, the baselines, and a
bootstrap that really resamples (equal to a plain loop over volumes, wider over patients)."""

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, roc_auc_score

from experiments.ct_clip import zeroshot
from experiments.ct_clip.config import ModelConfig
from experiments.ct_clip.ctrate import LABELS, patient_of
from experiments.ct_clip.model import CTClip, CTViT
from experiments.ct_clip.prompts import prompts
from medrepro.bootstrap import resample_indices
from medrepro.config_sections import TinyBertConfig
from medrepro.errors import ConfigError, DataError
from medrepro.tiny import build_tiny_bert

TINY = ModelConfig(dim=16, patch=4, temporal_patch=2, spatial_depth=1, temporal_depth=1, heads=2, dim_head=8,
                   latent=8, context_length=16)


def test_ctvit_token_grid_as_upstream_ratios():
    # Full size: (240, 480, 480) with patches (10, 20, 20) → 24 × 24 × 24; here the same ratios, smaller.
    vit = CTViT(TINY)
    assert vit(torch.zeros(2, 1, 8, 16, 12)).shape == (2, 4, 4, 3, 16)
    assert CTViT(ModelConfig()).grid((240, 480, 480)) == (24, 24, 24)
    with pytest.raises(ConfigError, match="not divisible"):
        vit.grid((7, 16, 16))


class _Dataset(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.labels = torch.from_numpy(np.random.default_rng(0).integers(0, 2, size=(n, len(LABELS))))
        self.items = [(None, f"valid_{i + 1}_a_1", {}) for i in range(n)]  # as ShardDataset's (shard, key, fields)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return torch.full((1, 4, 8, 8), float(i) / len(self)), "report", self.labels[i]


def test_each_volume_and_each_prompt_encoded_once(tmp_path):
    from transformers import AutoTokenizer, BertModel

    encoder = build_tiny_bert(tmp_path / "bert", [p for pair in prompts() for p in pair],
                              TinyBertConfig(hidden_size=16, layers=1, heads=2, intermediate_size=32))
    model = CTClip(TINY, (4, 8, 8), BertModel.from_pretrained(encoder, add_pooling_layer=False))
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    volumes_seen, text_rows = [], []
    model.visual.register_forward_hook(lambda m, args, out: volumes_seen.append(args[0].shape[0]))
    model.text.register_forward_hook(lambda m, args, kwargs, out: text_rows.append(kwargs["input_ids"].shape[0]),
                                     with_kwargs=True)
    pred = zeroshot.predict(model, tokenizer, _Dataset(10), batch_size=4, context_length=16)
    assert volumes_seen == [4, 4, 2], "every volume exactly once (upstream: once per label, 18 times)"
    assert text_rows == [2 * len(LABELS)], "the 36 prompts in one pass"
    assert pred.image_passes == 3 and pred.volumes == [f"valid_{i + 1}_a_1" for i in range(10)]
    assert pred.y_score.shape == (10, len(LABELS)) and ((pred.y_score > 0) & (pred.y_score < 1)).all()


def test_the_training_loss_reports_in_batch_accuracy_and_the_logit_scale(tmp_path):
    from transformers import BertModel

    encoder = build_tiny_bert(tmp_path / "bert", ["a report"], TinyBertConfig(hidden_size=16, layers=1, heads=2,
                                                                            intermediate_size=32))
    model = CTClip(TINY, (4, 8, 8), BertModel.from_pretrained(encoder, add_pooling_layer=False))
    ids = torch.randint(0, model.text.config.vocab_size, (3, 16))
    loss, extras = model(torch.randn(3, 1, 4, 8, 8), ids, torch.ones_like(ids))
    assert loss.requires_grad and extras["logit_scale"] == pytest.approx(float(np.exp(TINY.init_temperature)))
    hits = float(extras["acc"]) * 3
    assert hits == pytest.approx(round(hits)) and not extras["acc"].requires_grad


def upstream_find_threshold(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The rule of upstream's scripts/bootstrap_values.py, written out as a loop with scikit-learn."""
    best, best_distance = 0.0, np.inf
    for threshold in np.linspace(0, 1, 100):
        (tn, fp), (fn, tp) = confusion_matrix(labels, probabilities > threshold, labels=[0, 1])
        distance = np.hypot(fp / (fp + tn), 1 - tp / (tp + fn))
        if distance <= best_distance:
            best, best_distance = threshold, distance
    return float(best)


def test_upstream_threshold_by_hand_and_as_upstream_loops():
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1])
    score = np.array([0.1, 0.2, 0.3, 0.4, 0.65, 0.5, 0.7, 0.8, 0.9])
    # Any threshold in [0.4, 0.5) → FPR 1/5, TPR 1, distance 0.2, the closest; upstream keeps the last
    # of them on its grid, 49/99.
    assert zeroshot.upstream_threshold(y, score) == pytest.approx(49 / 99)
    rng = np.random.default_rng(5)
    for _ in range(8):
        y = rng.integers(0, 2, 40)
        y[:2] = [0, 1]
        score = np.round(np.clip(0.5 + 0.2 * (y - 0.5) + rng.normal(0, 0.25, 40), 0, 1), 2)  # ties too
        assert zeroshot.upstream_threshold(y, score) == upstream_find_threshold(score, y)


def _named(y: np.ndarray, score: np.ndarray, per_patient: int = 1) -> zeroshot.Predictions:
    names = [f"valid_{i // per_patient + 1}_a_{i % per_patient + 1}" for i in range(len(y))]
    return zeroshot.Predictions(names, y, score, 1)


def test_the_papers_metrics_are_scikit_learns_per_label_then_the_plain_mean():
    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, size=(50, len(LABELS)))
    score = np.clip(0.5 + 0.2 * (y - 0.5) + rng.normal(0, 0.3, size=y.shape), 0, 1)
    out = zeroshot.summarize(_named(y, score))
    f1s, accs, precisions, positive_f1s = [], [], [], []
    for k, label in enumerate(LABELS):
        decided = score[:, k] > upstream_find_threshold(score[:, k], y[:, k])
        assert out[f"threshold/{label}"] == upstream_find_threshold(score[:, k], y[:, k])
        f1s.append(f1_score(y[:, k], decided, average="weighted"))
        accs.append(accuracy_score(y[:, k], decided))
        precisions.append(precision_score(y[:, k], decided, zero_division=0))
        positive_f1s.append(f1_score(y[:, k], decided, zero_division=0))
        assert out[f"f1/{label}"] == pytest.approx(f1s[-1], abs=1e-12)
    assert out["f1_macro"] == pytest.approx(np.mean(f1s), abs=1e-12)
    assert out["accuracy_macro"] == pytest.approx(np.mean(accs), abs=1e-12)
    assert out["precision_macro"] == pytest.approx(np.mean(precisions), abs=1e-12)
    assert out["f1_positive_weighted"] == pytest.approx(np.average(positive_f1s, weights=y.sum(0)), abs=1e-12)
    assert out["auroc_macro"] == pytest.approx(np.mean([roc_auc_score(y[:, k], score[:, k])
                                                        for k in range(len(LABELS))]), abs=1e-12)


def test_baselines_by_hand():
    # One label with 1 positive of 4, every other label 2 of 4.
    y = np.zeros((4, len(LABELS)), dtype=int)
    y[0, 0] = 1
    y[:2, 1:] = 1
    out = zeroshot.summarize(_named(y, np.random.default_rng(0).random(y.shape)))
    mean = lambda first, rest: (first + (len(LABELS) - 1) * rest) / len(LABELS)  # noqa: E731
    # All absent: accuracy 3/4 and 2/4; weighted F1 = F1 of "absent" × its support: (3/4)(6/7) and (2/4)(2/3).
    assert out["baseline/all_absent/accuracy_macro"] == pytest.approx(mean(3 / 4, 1 / 2))
    assert out["baseline/all_absent/f1_macro"] == pytest.approx(mean(3 / 4 * 6 / 7, 1 / 2 * 2 / 3))
    assert out["baseline/all_absent/precision_macro"] == 0.0
    # All present: accuracy 1/4 and 2/4; F1 of "present" 2/5 and 2/3, weighted by its support 1/4 and 2/4.
    assert out["baseline/all_present/accuracy_macro"] == pytest.approx(mean(1 / 4, 1 / 2))
    assert out["baseline/all_present/f1_macro"] == pytest.approx(mean(1 / 4 * 2 / 5, 1 / 2 * 2 / 3))
    assert out["baseline/all_present/f1_positive_macro"] == pytest.approx(mean(2 / 5, 2 / 3))
    # A constant score ranks nothing; upstream's rule then decides "absent" everywhere.
    assert out["baseline/prevalence/auroc_macro"] == 0.5
    assert all(out[f"baseline/prevalence/{m}_macro"] == out[f"baseline/all_absent/{m}_macro"]
               for m in ("f1", "accuracy", "precision"))


def _predictions(n: int, seed: int = 0, per_patient: int = 1) -> zeroshot.Predictions:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=(n // per_patient, len(LABELS)))
    score = np.clip(0.5 + 0.25 * (y - 0.5) + rng.normal(0, 0.2, size=y.shape), 0, 1)
    # A patient's volumes: the same labels, nearly the same scores.
    y = np.repeat(y, per_patient, axis=0)
    score = np.clip(np.repeat(score, per_patient, axis=0) + rng.normal(0, 0.01, size=y.shape), 0, 1)
    return _named(y, score, per_patient)


def test_bootstrap_over_volumes_equals_a_plain_resampling_loop():
    pred, n_boot, seed = _predictions(60), 60, 7
    out = zeroshot.summarize(pred, n_boot=n_boot, alpha=0.05, seed=seed, unit="volume")
    assert out["auroc_macro_ci_low"] < out["auroc_macro"] < out["auroc_macro_ci_high"]
    assert out["auroc_macro_ci_high"] - out["auroc_macro_ci_low"] > 0.02, "upstream's intervals have zero width"
    thresholds = np.array([out[f"threshold/{label}"] for label in LABELS])

    def macro_auroc(rows: np.ndarray) -> float:
        y, s = pred.y_true[rows], pred.y_score[rows]
        return np.mean([roc_auc_score(y[:, k], s[:, k]) for k in range(len(LABELS)) if 0 < y[:, k].sum() < len(y)])

    def paper_f1(rows: np.ndarray) -> float:
        y, decided = pred.y_true[rows], pred.y_score[rows] > thresholds
        return np.mean([f1_score(y[:, k], decided[:, k], average="weighted") for k in range(len(LABELS))])

    loop_auc, loop_f1 = [], []
    for rows in resample_indices(len(pred.y_true), n_boot, seed):
        loop_auc.append(macro_auroc(rows))
        loop_f1.append(paper_f1(rows))
    np.testing.assert_allclose([out["auroc_macro_ci_low"], out["auroc_macro_ci_high"]],
                               np.quantile(loop_auc, [0.025, 0.975]), rtol=1e-12)
    np.testing.assert_allclose([out["f1_macro_ci_low"], out["f1_macro_ci_high"]],
                               np.quantile(loop_f1, [0.025, 0.975]), rtol=1e-12)
    assert out["auroc_macro"] == pytest.approx(macro_auroc(np.arange(60)))


def test_patient_intervals_are_wider_than_volume_intervals_when_volumes_share_a_patient():
    pred = _predictions(120, seed=2, per_patient=3)
    by_patient = zeroshot.summarize(pred, n_boot=500, seed=0)
    by_volume = zeroshot.summarize(pred, n_boot=500, seed=0, unit="volume")
    assert by_patient["n_patients"] == 40 and by_patient["n_volumes"] == 120
    for name in ("auroc_macro", "f1_macro", "accuracy_macro"):
        patient, volume = (out[f"{name}_ci_high"] - out[f"{name}_ci_low"] for out in (by_patient, by_volume))
        assert patient > 1.3 * volume, name


def test_a_useless_score_is_near_chance():
    rng = np.random.default_rng(3)
    pred = _named(rng.integers(0, 2, size=(200, len(LABELS))), rng.random((200, len(LABELS))))
    out = zeroshot.summarize(pred, n_boot=100, seed=0)
    assert out["auroc_macro_ci_low"] < 0.5 < out["auroc_macro_ci_high"]


def test_a_volume_name_without_a_patient_is_one_clear_error():
    assert patient_of("valid_12_b_2") == "valid_12" == patient_of("valid_12_a_1.nii.gz")
    with pytest.raises(DataError, match="patient of each volume cannot be told"):
        zeroshot.summarize(zeroshot.Predictions(["scan_0001"], np.ones((1, 18)), np.ones((1, 18)), 1))
