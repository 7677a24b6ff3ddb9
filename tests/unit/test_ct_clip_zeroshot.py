"""ct_clip model and zero-shot: CTViT's token grid, one encoder pass per volume and per prompt set, the
ROC-corner threshold, and a bootstrap that really resamples volumes (equal to a plain loop)."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from experiments.ct_clip import zeroshot
from experiments.ct_clip.config import ModelConfig
from experiments.ct_clip.ctrate import LABELS
from experiments.ct_clip.model import CTClip, CTViT
from experiments.ct_clip.prompts import prompts
from medrepro.bootstrap import resample_indices
from medrepro.config_sections import TinyBertConfig
from medrepro.errors import ConfigError
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
    assert pred.image_passes == 3
    assert pred.y_score.shape == (10, len(LABELS)) and ((pred.y_score > 0) & (pred.y_score < 1)).all()


def test_corner_threshold_is_the_roc_point_nearest_to_top_left():
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1])
    score = np.array([0.1, 0.2, 0.3, 0.4, 0.65, 0.5, 0.7, 0.8, 0.9])
    # Threshold 0.7 → (FPR 0, TPR 3/4), distance 0.25; 0.5 → (FPR 1/5, TPR 1), distance 0.2: the corner's.
    assert zeroshot.corner_threshold(y, score) == 0.5
    m = zeroshot.per_label(y, score)
    assert m["precision"] == pytest.approx(0.8) and m["accuracy"] == pytest.approx(8 / 9)
    assert m["f1"] == pytest.approx(8 / 9)


def test_a_reversed_ranking_gets_a_finite_threshold_that_predicts_nothing():
    # The one positive scored below both negatives: the ROC corner's nearest point is "nothing positive",
    # whose scikit-learn threshold is +inf (found by the full profile's dry run, where details.json failed).
    y, score = np.array([1, 0, 0]), np.array([0.2, 0.6, 0.9])
    threshold = zeroshot.corner_threshold(y, score)
    assert np.isfinite(threshold) and threshold > score.max()
    assert zeroshot.per_label(y, score)["accuracy"] == pytest.approx(2 / 3)


def _predictions(n: int, seed: int = 0) -> zeroshot.Predictions:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=(n, len(LABELS)))
    score = np.clip(0.5 + 0.25 * (y - 0.5) + rng.normal(0, 0.2, size=y.shape), 0, 1)
    return zeroshot.Predictions(y, score, 1)


def test_bootstrap_intervals_are_wide_and_equal_a_plain_resampling_loop():
    pred, n_boot, seed = _predictions(60), 200, 7
    out = zeroshot.summarize(pred, n_boot=n_boot, alpha=0.05, seed=seed)
    assert out["auroc_macro_ci_low"] < out["auroc_macro"] < out["auroc_macro_ci_high"]
    assert out["auroc_macro_ci_high"] - out["auroc_macro_ci_low"] > 0.02, "upstream's intervals have zero width"

    def macro_auroc(rows: np.ndarray) -> float:
        y, s = pred.y_true[rows], pred.y_score[rows]
        return np.mean([roc_auc_score(y[:, k], s[:, k]) for k in range(len(LABELS)) if 0 < y[:, k].sum() < len(y)])

    def weighted_f1(rows: np.ndarray) -> float:
        thresholds = np.array([out[f"threshold/{label}"] for label in LABELS])
        y, pred_rows = pred.y_true[rows], pred.y_score[rows] >= thresholds
        tp, npos, npred = (y & pred_rows).sum(0), y.sum(0), pred_rows.sum(0)
        return np.average(np.where(npos + npred > 0, 2 * tp / np.maximum(npos + npred, 1), 0), weights=npos)

    loop_auc, loop_f1 = [], []
    for rows in resample_indices(len(pred.y_true), n_boot, seed):
        loop_auc.append(macro_auroc(rows))
        loop_f1.append(weighted_f1(rows))
    np.testing.assert_allclose([out["auroc_macro_ci_low"], out["auroc_macro_ci_high"]],
                               np.quantile(loop_auc, [0.025, 0.975]), rtol=1e-12)
    np.testing.assert_allclose([out["f1_weighted_ci_low"], out["f1_weighted_ci_high"]],
                               np.quantile(loop_f1, [0.025, 0.975]), rtol=1e-12)
    assert out["auroc_macro"] == pytest.approx(macro_auroc(np.arange(60)))


def test_a_useless_score_is_near_chance_and_baselines_are_reported():
    rng = np.random.default_rng(3)
    pred = zeroshot.Predictions(rng.integers(0, 2, size=(200, len(LABELS))), rng.random((200, len(LABELS))), 1)
    out = zeroshot.summarize(pred, n_boot=100, seed=0)
    assert out["auroc_macro_ci_low"] < 0.5 < out["auroc_macro_ci_high"]
    assert out["baseline_auroc"] == 0.5 and 0.4 < out["baseline_f1_all_present_weighted"] < 0.8
