"""Percentile bootstrap confidence intervals, vectorised over resamples.

A statistic is a `stat_rows` function: it takes a (B, n) matrix of resample indices and returns the
B statistic values in one numpy call, so a thousand resamples cost a few array operations rather
than a thousand sklearn calls. Rows where the statistic is undefined (an AUC on a resample with no
positives) come back as NaN and are dropped and counted.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

StatRows = Callable[[np.ndarray], np.ndarray]

# Bounds the (rows × n) index matrix and the per-chunk temporaries derived from it (ranks, one-hot
# codes) to a few hundred MB whatever n_boot and n are.
MAX_ELEMENTS = 10_000_000


@dataclass(frozen=True)
class Interval:
    """`estimate` is the statistic on the full sample; `n_valid` counts the resamples where it was defined."""

    estimate: float
    low: float
    high: float
    n_valid: int


def resample_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) indices drawn with replacement; the same seed always gives the same matrix."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap(
    stat_rows: StatRows,
    n: int,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    *,
    max_elements: int = MAX_ELEMENTS,
) -> Interval:
    """Estimate on the full sample and the (1 - alpha) percentile interval over `n_boot` resamples.

    The resamples are the rows of `resample_indices(n, n_boot, seed)`, drawn in chunks of at most
    `max_elements` indices from one generator, so the result does not depend on the chunk size.
    When no resample is valid, `low` and `high` are NaN.
    """
    if n < 1 or n_boot < 1:
        raise ValueError(f"bootstrap needs n >= 1 and n_boot >= 1, got n={n}, n_boot={n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")

    estimate = float(_call(stat_rows, np.arange(n)[None])[0])

    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, max_elements // n)
    values = []
    for start in range(0, n_boot, rows_per_chunk):
        rows = min(rows_per_chunk, n_boot - start)
        values.append(_call(stat_rows, rng.integers(0, n, size=(rows, n))))
    stats = np.concatenate(values)
    valid = stats[~np.isnan(stats)]

    if valid.size == 0:
        return Interval(estimate, float("nan"), float("nan"), 0)
    low, high = np.quantile(valid, [alpha / 2, 1 - alpha / 2])
    return Interval(estimate, float(low), float(high), int(valid.size))


def _call(stat_rows: StatRows, idx: np.ndarray) -> np.ndarray:
    out = np.asarray(stat_rows(idx), dtype=float)
    if out.shape != (idx.shape[0],):
        raise ValueError(f"stat_rows must return shape ({idx.shape[0]},) for indices {idx.shape}, got {out.shape}")
    return out


def _check_lengths(**arrays: np.ndarray) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"arrays must have equal lengths, got {lengths}")


def _check_classes(y: np.ndarray, name: str, n_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D integer array, got shape {y.shape} dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{name} holds labels outside 0..{n_classes - 1}")
    return y


def _per_row_counts(codes: np.ndarray, n_classes: int, weights: np.ndarray | None = None) -> np.ndarray:
    """(B, K) counts of each class code per row, by one bincount over row-offset codes."""
    rows = codes.shape[0]
    offset = (np.arange(rows)[:, None] * n_classes + codes).ravel()
    flat_weights = None if weights is None else weights.ravel()
    return np.bincount(offset, weights=flat_weights, minlength=rows * n_classes).reshape(rows, n_classes)


def _labels_and_hits(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y_true = _check_classes(y_true, "y_true", n_classes)
    y_pred = _check_classes(y_pred, "y_pred", n_classes)
    _check_lengths(y_true=y_true, y_pred=y_pred)
    return y_true, y_pred, (y_true == y_pred).astype(float)


def accuracy_stat(y_true: np.ndarray, y_pred: np.ndarray) -> StatRows:
    _check_lengths(y_true=y_true, y_pred=y_pred)
    correct = (np.asarray(y_true) == np.asarray(y_pred)).astype(float)
    return lambda idx: correct[idx].mean(axis=1)


def balanced_accuracy_stat(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> StatRows:
    """Mean recall over the classes present in each resample, as sklearn's balanced_accuracy_score."""
    y_true, y_pred, correct = _labels_and_hits(y_true, y_pred, n_classes)

    def stat(idx: np.ndarray) -> np.ndarray:
        codes = y_true[idx]
        support = _per_row_counts(codes, n_classes)
        hits = _per_row_counts(codes, n_classes, correct[idx])
        present = support > 0
        recall = np.divide(hits, support, out=np.zeros_like(hits), where=present)
        return recall.sum(axis=1) / present.sum(axis=1)

    return stat


def f1_macro_stat(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> StatRows:
    """Macro F1 over all `n_classes` labels with zero_division=0, as sklearn's f1_score(labels=...)."""
    y_true, y_pred, correct = _labels_and_hits(y_true, y_pred, n_classes)

    def stat(idx: np.ndarray) -> np.ndarray:
        codes = y_true[idx]
        true_counts = _per_row_counts(codes, n_classes)
        pred_counts = _per_row_counts(y_pred[idx], n_classes)
        tp = _per_row_counts(codes, n_classes, correct[idx])
        # F1 = 2TP / (2TP + FP + FN) = 2TP / (true count + predicted count).
        denom = true_counts + pred_counts
        f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
        return f1.mean(axis=1)

    return stat


def auc_stat(y_true_binary: np.ndarray, y_score: np.ndarray) -> StatRows:
    """ROC AUC per resample via the Mann–Whitney U statistic; NaN when a class is missing."""
    y = np.asarray(y_true_binary)
    if y.ndim != 1 or not np.isin(y, (0, 1)).all():
        raise ValueError("y_true_binary must be a 1-D array of 0/1 (or bool) labels")
    scores = np.asarray(y_score, dtype=float)
    if scores.ndim != 1:
        raise ValueError(f"y_score must be 1-D, got shape {scores.shape}")
    _check_lengths(y_true_binary=y, y_score=scores)
    y = y.astype(float)

    def stat(idx: np.ndarray) -> np.ndarray:
        labels = y[idx]
        # Average ranks make tied scores count one half, matching roc_auc_score.
        ranks = rankdata(scores[idx], axis=1)
        n_pos = labels.sum(axis=1)
        n_neg = idx.shape[1] - n_pos
        u = (ranks * labels).sum(axis=1) - n_pos * (n_pos + 1) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)

    return stat


def f1_binary_stat(y_true_binary: np.ndarray, y_pred_binary: np.ndarray) -> StatRows:
    """F1 of the positive class with zero_division=0, as sklearn's f1_score(average="binary")."""
    _check_lengths(y_true_binary=y_true_binary, y_pred_binary=y_pred_binary)
    y = np.asarray(y_true_binary).astype(bool)
    pred = np.asarray(y_pred_binary).astype(bool)
    tp_rows = (y & pred).astype(float)
    count_rows = y.astype(float) + pred.astype(float)

    def stat(idx: np.ndarray) -> np.ndarray:
        tp, denom = tp_rows[idx].sum(axis=1), count_rows[idx].sum(axis=1)
        return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)

    return stat


def mean_stat(values: np.ndarray) -> StatRows:
    """The mean of per-sample values (hit@k of each query, a per-sample score)."""
    v = np.asarray(values, dtype=float)
    if v.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {v.shape}")
    return lambda idx: v[idx].mean(axis=1)


def bootstrap_clusters(
    stat_rows: StatRows,
    clusters: np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> Interval:
    """As `bootstrap`, but each resample draws whole clusters (patients, mentions) with replacement and
    keeps every sample of each drawn cluster: the interval for data whose samples are not independent
    (both eyes of a patient). `clusters[i]` names the cluster of sample i.

    Resamples hold different numbers of samples; those of equal size are evaluated together, so
    `stat_rows` still gets index matrices. Two statistics given the same clusters, n_boot and seed
    see the same resamples (paired comparisons take the difference inside one statistic).
    """
    clusters = np.asarray(clusters)
    if clusters.ndim != 1 or clusters.size < 1 or n_boot < 1:
        raise ValueError(f"bootstrap_clusters needs a 1-D non-empty clusters array and n_boot >= 1, "
                         f"got shape {clusters.shape}, n_boot={n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    n = clusters.size
    _, codes = np.unique(clusters, return_inverse=True)
    sizes = np.bincount(codes)
    # members[g, :sizes[g]] are the samples of cluster g; the rest is padding (-1).
    order = np.argsort(codes, kind="stable")
    members = np.full((sizes.size, sizes.max()), -1)
    members[codes[order], np.arange(n) - np.repeat(np.cumsum(sizes) - sizes, sizes)] = order

    estimate = float(_call(stat_rows, np.arange(n)[None])[0])
    draws = np.random.default_rng(seed).integers(0, sizes.size, size=(n_boot, sizes.size))
    lengths = sizes[draws].sum(axis=1)
    stats = np.empty(n_boot)
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        padded = members[draws[rows]].reshape(rows.size, -1)
        stats[rows] = _call(stat_rows, padded[padded >= 0].reshape(rows.size, length))
    valid = stats[~np.isnan(stats)]
    if valid.size == 0:
        return Interval(estimate, float("nan"), float("nan"), 0)
    low, high = np.quantile(valid, [alpha / 2, 1 - alpha / 2])
    return Interval(estimate, float(low), float(high), int(valid.size))
