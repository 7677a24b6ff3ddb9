"""Classification metrics as a flat name → float dict, ready for a metrics.json.

Every call passes `labels=range(K)` to scikit-learn so that a class absent from a split keeps its
place (and scores zero) instead of silently shifting the per-class columns.
"""

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from medrepro.calibration import DEFAULT_BINS, calibration_errors


def _check_labels(y: np.ndarray, name: str, n_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{name} holds labels outside 0..{n_classes - 1}")
    return y


def _check_pair(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    if n_classes < 1:
        raise ValueError(f"n_classes must be at least 1, got {n_classes}")
    y_true = _check_labels(y_true, "y_true", n_classes)
    y_pred = _check_labels(y_pred, "y_pred", n_classes)
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} samples but y_pred has {len(y_pred)}")
    if len(y_true) == 0:
        raise ValueError("metrics need at least one sample")
    return y_true, y_pred


def classification_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    class_names: Sequence[str],
    y_score: np.ndarray | None = None,
) -> dict[str, float]:
    """Overall and per-class metrics; one-vs-rest AUCs when `y_score` (n × K) is given.

    `auroc/<name>` is reported only for classes with both positives and negatives in `y_true`, and
    `auroc_macro` averages those; with no such class neither appears, so the dict never holds NaN.
    """
    n_classes = len(class_names)
    if len(set(class_names)) != n_classes:
        raise ValueError(f"class_names must be unique, got {list(class_names)}")
    y_true, y_pred = _check_pair(y_true, y_pred, n_classes)
    labels = list(range(n_classes))

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    present = support > 0
    metrics: dict[str, float] = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        # sklearn's balanced_accuracy_score takes no `labels`; the mean recall over the classes
        # present in y_true is its definition, computed here without its absent-class warning.
        "balanced_accuracy": float(recall[present].mean()),
        "f1_macro": float(f1.mean()),
        "f1_weighted": float(np.average(f1, weights=support)),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
    }
    for k, name in enumerate(class_names):
        metrics[f"precision/{name}"] = float(precision[k])
        metrics[f"recall/{name}"] = float(recall[k])
        metrics[f"f1/{name}"] = float(f1[k])
        metrics[f"support/{name}"] = float(support[k])

    if y_score is not None:
        metrics.update(_auc_metrics(y_true, np.asarray(y_score, dtype=float), class_names))
    return metrics


def _auc_metrics(y_true: np.ndarray, y_score: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    if y_score.shape != (len(y_true), len(class_names)):
        raise ValueError(
            f"y_score must have shape (n_samples, n_classes) = ({len(y_true)}, {len(class_names)}), "
            f"got {y_score.shape}"
        )
    if not np.isfinite(y_score).all():
        raise ValueError("y_score holds NaN or infinite values")
    aucs: dict[str, float] = {}
    for k, name in enumerate(class_names):
        positives = y_true == k
        if positives.any() and not positives.all():
            aucs[f"auroc/{name}"] = float(roc_auc_score(positives, y_score[:, k]))
    if aucs:
        aucs["auroc_macro"] = float(np.mean(list(aucs.values())))
    return aucs


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """K × K counts; rows are true classes, columns predicted ones."""
    y_true, y_pred = _check_pair(y_true, y_pred, n_classes)
    return confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))


def binary_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float = 0.5,
                   n_bins: int = DEFAULT_BINS) -> dict[str, float]:
    """Threshold metrics at `prob >= threshold`, ranking metrics and calibration of a binary classifier.

    pr_auc is scikit-learn's average precision (the step-wise area, not the trapezoidal one, which
    overstates it); ece/mce follow `medrepro.calibration`. ROC-AUC and PR-AUC need both classes.
    """
    y = _check_labels(y_true, "y_true", 2)
    p = np.asarray(prob, dtype=np.float64)
    if p.shape != y.shape or y.size == 0:
        raise ValueError(f"y_true and prob must be non-empty and of the same length, got {y.shape} and {p.shape}")
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise ValueError("prob must hold probabilities in [0, 1]")
    if y.min() == y.max():
        raise ValueError("binary metrics need both classes in y_true")
    pred = (p >= threshold).astype(np.int64)
    tn, fp, _, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    precision, recall, f1, _ = precision_recall_fscore_support(y, pred, average="binary", zero_division=0)
    return {
        "accuracy": float((tp + tn) / y.size),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "specificity": float(tn / (tn + fp)),
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "brier": float(brier_score_loss(y, p)),
        **calibration_errors(y, p, n_bins),
        "positive_rate": float(y.mean()),
        "n": float(y.size),
    }
