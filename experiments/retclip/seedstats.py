"""The numbers of one encoder over its training seeds: means, spread over seeds, patient-bootstrap
intervals, baselines, and paired differences between encoders on the same test samples.

Every seed's model is evaluated on the same samples (eyes or patients), so a statistic of the
encoder is the mean over seeds of the statistic of each seed, and its interval resamples patients
(both eyes of a patient together) with the seed-mean computed inside each resample. That interval
is the test-set sampling uncertainty of the seed-averaged model; the spread over seeds (`_sd`, the
sample standard deviation) is reported beside it.
"""

from collections.abc import Callable, Sequence

import numpy as np

from experiments.retclip.odir import CLASSES
from experiments.retclip.zeroshot import Predictions, summarize
from medrepro import bootstrap

K = len(CLASSES)
# The statistics that get an interval and a spread over seeds.
INTERVAL_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "auroc_macro")


def _stat(name: str, pred: Predictions) -> bootstrap.StatRows:
    y_true, y_pred = pred.y_true, pred.y_pred
    if name == "accuracy":
        return bootstrap.accuracy_stat(y_true, y_pred)
    if name == "balanced_accuracy":
        return bootstrap.balanced_accuracy_stat(y_true, y_pred, K)
    if name == "f1_macro":
        return bootstrap.f1_macro_stat(y_true, y_pred, K)
    if name == "auroc_macro":
        # The mean over the classes with positives and negatives in the resample, as auroc_macro.
        per_class = [bootstrap.auc_stat(y_true == c, pred.y_score[:, c]) for c in range(K) if (y_true == c).any()]
        return lambda idx: np.nanmean(np.stack([stat(idx) for stat in per_class]), axis=0)
    if name.startswith("f1/"):
        c = CLASSES.index(name.removeprefix("f1/"))
        return bootstrap.f1_binary_stat(y_true == c, y_pred == c)
    if name.startswith("auroc/"):
        c = CLASSES.index(name.removeprefix("auroc/"))
        return bootstrap.auc_stat(y_true == c, pred.y_score[:, c])
    raise KeyError(name)


def seed_mean_stat(name: str, preds: Sequence[Predictions]) -> bootstrap.StatRows:
    stats = [_stat(name, p) for p in preds]
    return lambda idx: np.mean(np.stack([stat(idx) for stat in stats]), axis=0)


def check_same_samples(preds: Sequence[Predictions]) -> None:
    first = preds[0]
    for p in preds[1:]:
        if not (np.array_equal(p.y_true, first.y_true) and np.array_equal(p.patients, first.patients)):
            raise ValueError("every seed (and encoder) must be evaluated on the same samples in the same order")


def encoder_summary(preds: Sequence[Predictions], seeds: Sequence[int], majority_class: int, n_boot: int,
                    alpha: float, boot_seed: int) -> dict[str, float]:
    """Means over seeds of every metric; `_sd` and `/seed-<s>` for the headline ones; intervals
    (patients resampled) for the headline ones, per-class F1 and AUC; the baselines."""
    check_same_samples(preds)
    per_seed = [summarize(p) for p in preds]
    keys = set.intersection(*(set(s) for s in per_seed))
    out = {k: float(np.mean([s[k] for s in per_seed])) for k in sorted(keys)}
    for name in INTERVAL_METRICS:
        if name not in keys:
            continue
        values = [s[name] for s in per_seed]
        out[f"{name}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        out.update({f"{name}/seed-{seed}": v for seed, v in zip(seeds, values, strict=True)})
    y_true = preds[0].y_true
    out.update(baselines(y_true, majority_class))
    if n_boot <= 0 or len(y_true) == 0:
        return out
    names = [n for n in (*INTERVAL_METRICS, *(f"f1/{c}" for c in CLASSES), *(f"auroc/{c}" for c in CLASSES))
             if n in keys]
    stats: dict[str, Callable] = {name: seed_mean_stat(name, preds) for name in names}
    majority_hits = (y_true == majority_class).astype(float)
    accuracy = stats["accuracy"]
    stats["accuracy_minus_majority"] = lambda idx: accuracy(idx) - majority_hits[idx].mean(axis=1)
    out["accuracy_minus_majority"] = out["accuracy"] - out["majority_accuracy"]
    for name, stat in stats.items():
        interval = bootstrap.bootstrap_clusters(stat, preds[0].patients, n_boot, alpha, boot_seed)
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = interval.low, interval.high
    return out


def baselines(y_true: np.ndarray, majority_class: int) -> dict[str, float]:
    """What a model that learned nothing scores: 1/K, always the training majority class, and the
    test class prior (the majority baseline is the prior of that class)."""
    n = max(len(y_true), 1)
    out = {"chance_accuracy": 1.0 / K, "majority_accuracy": float((y_true == majority_class).sum() / n),
           "majority_balanced_accuracy": 1.0 / max(len(np.unique(y_true)), 1),
           "majority_class_index": float(majority_class)}
    out.update({f"prior/{c}": float((y_true == k).sum() / n) for k, c in enumerate(CLASSES)})
    return out


def paired_difference(a: Sequence[Predictions], b: Sequence[Predictions], metric: str, n_boot: int, alpha: float,
                      boot_seed: int) -> bootstrap.Interval:
    """Seed-mean `metric` of encoder a minus that of b on the same samples, patients resampled."""
    check_same_samples([*a, *b])
    stat_a, stat_b = seed_mean_stat(metric, a), seed_mean_stat(metric, b)
    return bootstrap.bootstrap_clusters(lambda idx: stat_a(idx) - stat_b(idx), a[0].patients, n_boot, alpha,
                                        boot_seed)
