"""Probability calibration for binary classifiers: errors, and post-hoc scalers fitted on validation.

Convention (the one torchmetrics' `BinaryCalibrationError` and scikit-learn's `calibration_curve`
share): the predicted probability of the positive class is binned into `n_bins` equal-width bins over
[0, 1]; in each bin the mean predicted probability is compared with the fraction of positives.
ECE is the bin-size-weighted mean absolute gap (`norm="l1"`), MCE the largest gap over non-empty bins
(`norm="max"`). Comparing a thresholded accuracy with the mean probability, as some code does, is not
a calibration error.

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
