"""Calibration errors, scalers and binary metrics against reference implementations."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, f1_score, roc_auc_score

from medrepro import bootstrap
from medrepro.calibration import (
    Scaler,
    adaptive_ece,
    bins_ece,
    calibration_errors,
    fit_platt,
    fit_scaler,
    fit_temperature,
    reliability_bins,
    sigmoid,
)
from medrepro.metrics import binary_metrics


def reference_ece_mce(y: np.ndarray, p: np.ndarray, n_bins: int) -> tuple[float, float]:
    """Equal-width bins over P(positive), right-closed as torchmetrics bins them (bucketize)."""
    bins = np.clip(np.ceil(p * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece, mce = 0.0, 0.0
    for b in range(n_bins):
        members = bins == b
        if members.any():
            gap = abs(y[members].mean() - p[members].mean())
            ece += members.mean() * gap
            mce = max(mce, gap)
    return ece, mce


def make_scores(n: int, a: float, b: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose true positive probability is σ(a z + b)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, n)
    y = (rng.random(n) < sigmoid(a * z + b)).astype(int)
    return z, y


def test_ece_and_mce_match_a_reference_binning():
    rng = np.random.default_rng(1)
    p = rng.random(2000)
    y = (rng.random(2000) < p**2).astype(int)  # over-confident: true rate p², predicted p
    errors = calibration_errors(y, p, n_bins=10)
    ece, mce = reference_ece_mce(y, p, 10)
    assert errors["ece"] == pytest.approx(ece, abs=1e-6)
    assert errors["mce"] == pytest.approx(mce, abs=1e-6)
    assert errors["ece"] > 0.1  # p - p² averages 1/6 over uniform p


def test_bin_counts_reproduce_the_torchmetrics_ece():
    rng = np.random.default_rng(3)
    p = rng.random(1500)
    y = (rng.random(1500) < p**2).astype(int)
    bins = reliability_bins(y, p, 10)
    assert sum(b["count"] for b in bins) == 1500 and len(bins) == 10
    assert bins_ece(bins) == pytest.approx(calibration_errors(y, p, 10)["ece"], abs=1e-6)


def test_adaptive_ece_sees_errors_that_cancel_inside_a_wide_equal_width_bin():
    rng = np.random.default_rng(4)
    # Near-zero probabilities, as for a crowd of easy negatives: half at 0.001 and half at 0.099, both
    # with a true positive rate of 0.05. One equal-width bin of ten averages the two errors away.
    p = np.repeat([0.001, 0.099], 5000)
    y = (rng.random(10_000) < 0.05).astype(int)
    assert calibration_errors(y, p, 10)["ece"] < 0.01
    bins = reliability_bins(y, p, 10, "quantile")
    assert [b["count"] for b in bins] == [1000] * 10  # equal mass
    assert adaptive_ece(y, p, 10) > 0.04
    with pytest.raises(ValueError, match="strategy"):
        reliability_bins(y, p, 10, "kmeans")


def test_calibrated_probabilities_have_small_ece_and_thresholded_accuracy_is_not_ece():
    rng = np.random.default_rng(2)
    p = rng.random(50_000)
    y = (rng.random(50_000) < p).astype(int)
    assert calibration_errors(y, p)["ece"] < 0.01
    # The upstream bug compared accuracy at 0.5 with mean probability: here that gap is about 0.25.
    accuracy = ((p >= 0.5) == y).mean()
    assert abs(accuracy - p.mean()) > 0.2


def test_platt_recovers_the_generating_parameters():
    z, y = make_scores(20_000, a=0.5, b=-1.0)
    scaler = fit_platt(z, y)
    assert scaler.a == pytest.approx(0.5, abs=0.05)
    assert scaler.b == pytest.approx(-1.0, abs=0.08)


def test_temperature_recovers_the_generating_temperature_and_keeps_the_ranking():
    z, y = make_scores(20_000, a=1 / 3, b=0.0, seed=3)
    scaler = fit_temperature(z, y)
    assert scaler.temperature == pytest.approx(3.0, rel=0.08)
    before, after = sigmoid(z), scaler(z)
    assert roc_auc_score(y, before) == pytest.approx(roc_auc_score(y, after), abs=1e-12)
    assert calibration_errors(y, after)["ece"] < calibration_errors(y, before)["ece"]


def test_fit_scaler_names_and_identity():
    z, y = make_scores(500, 1.0, 0.0)
    assert fit_scaler("none", z, y) == Scaler()
    np.testing.assert_allclose(Scaler()(z), sigmoid(z))
    with pytest.raises(ValueError, match="unknown calibration method"):
        fit_scaler("isotonic", z, y)
    with pytest.raises(ValueError, match="both classes"):
        fit_platt(z, np.zeros_like(y))


def test_sigmoid_is_stable_at_extremes():
    out = sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    np.testing.assert_array_equal(out, [0.0, 0.5, 1.0])


def test_binary_metrics_agree_with_sklearn():
    rng = np.random.default_rng(4)
    y = (rng.random(500) < 0.2).astype(int)
    p = np.clip(0.5 * y + rng.random(500) * 0.6, 0, 1)
    m = binary_metrics(y, p, threshold=0.5)
    pred = (p >= 0.5).astype(int)
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["specificity"] == pytest.approx(((pred == 0) & (y == 0)).sum() / (y == 0).sum())
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, p))
    assert m["brier"] == pytest.approx(brier_score_loss(y, p))
    assert m["positive_rate"] == pytest.approx(y.mean())


def test_binary_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="both classes"):
        binary_metrics(np.zeros(4, dtype=int), np.full(4, 0.3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        binary_metrics(np.array([0, 1]), np.array([0.2, 1.5]))


def test_bootstrap_binary_f1_matches_sklearn_on_each_resample():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 300)
    pred = np.where(rng.random(300) < 0.8, y, 1 - y)
    stat = bootstrap.f1_binary_stat(y, pred)
    idx = bootstrap.resample_indices(300, 20, seed=0)
    expected = [f1_score(y[row], pred[row]) for row in idx]
    np.testing.assert_allclose(stat(idx), expected)
    interval = bootstrap.bootstrap(stat, 300, 200, seed=0)
    assert interval.low < f1_score(y, pred) < interval.high
