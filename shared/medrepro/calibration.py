"""Probability calibration for binary classifiers: errors, and post-hoc scalers fitted on validation.

Convention (the one torchmetrics' `BinaryCalibrationError` and scikit-learn's `calibration_curve`
share): the predicted probability of the positive class is binned into `n_bins` equal-width bins over
[0, 1]; in each bin the mean predicted probability is compared with the fraction of positives.
ECE is the bin-size-weighted mean absolute gap (`norm="l1"`), MCE the largest gap over non-empty bins
(`norm="max"`). Comparing a thresholded accuracy with the mean probability, as some code does, is not
a calibration error.

Equal-width bins flatter a classifier whose probabilities crowd near 0 (most pairs are easy
negatives): the crowded bin is well calibrated and outweighs the rest. `reliability_bins` reports
every bin's count beside its gap, and `adaptive_ece` uses equal-mass bins (each holds about n/n_bins
samples, sorted by probability), so every bin weighs the same.

Both scalers act on logits, so they keep the ranking (ROC-AUC and PR-AUC do not change) and only move
probabilities: temperature scaling fits one parameter, p = σ(z / T); Platt scaling fits two,
p = σ(a z + b), by unregularised logistic regression on the logit.
"""

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torchmetrics.functional.classification import binary_calibration_error

DEFAULT_BINS = 15


def _check(y_true: np.ndarray, values: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    v = np.asarray(values, dtype=np.float64)
    if y.ndim != 1 or v.shape != y.shape:
        raise ValueError(f"y_true and {name} must be 1-D of the same length, got {y.shape} and {v.shape}")
    if y.size == 0:
        raise ValueError("calibration needs at least one sample")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold 0/1 labels")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return y.astype(np.int64), v


def calibration_errors(y_true: np.ndarray, prob: np.ndarray, n_bins: int = DEFAULT_BINS) -> dict[str, float]:
    """{"ece", "mce"} with `n_bins` equal-width bins (see the module docstring for the convention)."""
    y, p = _check(y_true, prob, "prob")
    preds, target = torch.from_numpy(p), torch.from_numpy(y)
    return {
        "ece": float(binary_calibration_error(preds, target, n_bins=n_bins, norm="l1")),
        "mce": float(binary_calibration_error(preds, target, n_bins=n_bins, norm="max")),
    }


def reliability_bins(y_true: np.ndarray, prob: np.ndarray, n_bins: int = DEFAULT_BINS,
                     strategy: str = "uniform") -> list[dict[str, float]]:
    """Per non-empty bin: its edges, sample count, mean probability and fraction of positives.

    `uniform`: `n_bins` equal-width bins over [0, 1] (right-closed, as torchmetrics bins); `quantile`:
    equal-mass bins, the sorted samples cut into `n_bins` runs of (nearly) equal size.
    """
    y, p = _check(y_true, prob, "prob")
    if strategy == "uniform":
        codes = np.clip(np.ceil(p * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    elif strategy == "quantile":
        codes = np.empty(p.size, dtype=np.int64)
        codes[np.argsort(p, kind="stable")] = np.arange(p.size) * n_bins // p.size
    else:
        raise ValueError(f"unknown binning strategy {strategy!r}: use uniform or quantile")
    bins = []
    for code in np.unique(codes):
        members = codes == code
        low, high = ((code / n_bins, (code + 1) / n_bins) if strategy == "uniform"
                     else (float(p[members].min()), float(p[members].max())))
        bins.append({"low": float(low), "high": float(high), "count": int(members.sum()),
                     "mean_prob": float(p[members].mean()), "frac_pos": float(y[members].mean())})
    return bins


def bins_ece(bins: list[dict[str, float]]) -> float:
    """The count-weighted mean |fraction positive - mean probability| over `reliability_bins`."""
    total = sum(b["count"] for b in bins)
    return float(sum(b["count"] * abs(b["frac_pos"] - b["mean_prob"]) for b in bins) / total)


def adaptive_ece(y_true: np.ndarray, prob: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    """ECE over equal-mass bins (see the module docstring)."""
    return bins_ece(reliability_bins(y_true, prob, n_bins, "quantile"))


def sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    # exp of a negative number only: no overflow warning for large |z|.
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@dataclass
class Scaler:
    """p = σ(a z + b). Temperature scaling is a = 1/T, b = 0; the identity is a = 1, b = 0."""

    method: str = "none"
    a: float = 1.0
    b: float = 0.0

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        return sigmoid(self.a * np.asarray(logits, dtype=np.float64) + self.b)

    @property
    def temperature(self) -> float:
        return 1.0 / self.a


def fit_platt(logits: np.ndarray, y_true: np.ndarray) -> Scaler:
    y, z = _check(y_true, logits, "logits")
    if y.min() == y.max():
        raise ValueError("Platt scaling needs both classes in the validation labels")
    model = LogisticRegression(C=np.inf, solver="lbfgs", max_iter=1000).fit(z[:, None], y)
    return Scaler("platt", float(model.coef_[0, 0]), float(model.intercept_[0]))


def fit_temperature(logits: np.ndarray, y_true: np.ndarray, max_iter: int = 200) -> Scaler:
    """Minimise the validation negative log-likelihood over log T (so T stays positive), with L-BFGS."""
    y, z = _check(y_true, logits, "logits")
    z_t = torch.from_numpy(z)
    y_t = torch.from_numpy(y.astype(np.float64))
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z_t / log_t.exp(), y_t)
        loss.backward()
        return loss

    optimizer.step(closure)
    return Scaler("temperature", float(torch.exp(-log_t.detach())), 0.0)


def fit_scaler(method: str, logits: np.ndarray, y_true: np.ndarray) -> Scaler:
    if method == "platt":
        return fit_platt(logits, y_true)
    if method == "temperature":
        return fit_temperature(logits, y_true)
    if method == "none":
        return Scaler()
    raise ValueError(f"unknown calibration method {method!r}: use platt, temperature or none")
