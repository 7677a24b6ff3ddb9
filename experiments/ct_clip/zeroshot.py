"""Zero-shot multi-label classification of the 18 CT-RATE abnormalities, with bootstrap intervals.

Each label has the prompt pair "{label} is present." / "{label} is not present."; a volume's score for
the label is the softmax over the pair of exp(temperature) × cosine, positive side. The 36 prompts are
encoded once and each volume once (upstream re-encodes the volume for every label: 18 passes).

Per label, AUROC, and F1, accuracy and precision at the threshold whose ROC point lies closest to the
corner (0, 1), upstream's rule. Averages: macro (plain mean) and weighted by each label's positives.
Intervals: the percentile bootstrap over volumes (the independent unit), `n_boot` resamples; the
thresholds stay those chosen on the full set.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score, precision_score, roc_auc_score, roc_curve
from torch.utils.data import DataLoader

from experiments.ct_clip.ctrate import LABELS
from experiments.ct_clip.data import ShardDataset
from experiments.ct_clip.model import CTClip, tokenize
from experiments.ct_clip.prompts import prompts
from medrepro import bootstrap

PER_LABEL = ("auroc", "f1", "accuracy", "precision")


@dataclass
class Predictions:
    y_true: np.ndarray  # (n, 18) 0/1
    y_score: np.ndarray  # (n, 18) probability of "present"
    # Image-encoder forward passes it took (one per batch of volumes).
    image_passes: int


@torch.no_grad()
def prompt_features(model: CTClip, tokenizer: Callable, context_length: int, device: torch.device) -> torch.Tensor:
    """(18, 2, latent) normalised features of the prompt pairs, all 36 in one text pass."""
    texts = [p for pair in prompts() for p in pair]
    tokens = {k: v.to(device) for k, v in tokenize(tokenizer, texts, context_length).items()}
    return F.normalize(model.encode_text(**tokens), dim=-1).view(len(LABELS), 2, -1)


@torch.no_grad()
def predict(model: CTClip, tokenizer: Callable, dataset: ShardDataset, batch_size: int, context_length: int,
            ) -> Predictions:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    text = prompt_features(model, tokenizer, context_length, device)
    scale = model.temperature.exp()
    y_true, y_score, passes = [], [], 0
    for volumes, _, labels in DataLoader(dataset, batch_size=batch_size):
        image = F.normalize(model.encode_image(volumes.to(device)), dim=-1)
        passes += 1
        logits = scale * torch.einsum("bd,lpd->blp", image, text)
        y_score.append(torch.softmax(logits.float(), dim=-1)[..., 0].cpu().numpy())
        y_true.append(labels.numpy())
    model.train(was_training)
    return Predictions(np.concatenate(y_true), np.concatenate(y_score).astype(np.float64), passes)


def corner_threshold(y: np.ndarray, score: np.ndarray) -> float:
    """The threshold of the ROC point closest to (FPR 0, TPR 1).

    scikit-learn's first ROC point (nothing predicted positive) has the threshold +inf; where that
    point is the closest (scores ranked against the labels), the threshold is the next float above the
    highest score instead: the same predictions, and a number JSON can hold.
    """
    fpr, tpr, thresholds = roc_curve(y, score)
    threshold = float(thresholds[np.argmin(np.hypot(fpr, 1 - tpr))])
    return threshold if np.isfinite(threshold) else float(np.nextafter(score.max(), np.inf))


def per_label(y: np.ndarray, score: np.ndarray) -> dict[str, float]:
    threshold = corner_threshold(y, score)
    pred = score >= threshold
    return {"auroc": float(roc_auc_score(y, score)), "f1": float(f1_score(y, pred, zero_division=0)),
            "accuracy": float(accuracy_score(y, pred)), "precision": float(precision_score(y, pred, zero_division=0)),
            "threshold": threshold}


def _label_rows(y: np.ndarray, score: np.ndarray, thresholds: np.ndarray,
                ) -> Callable[[np.ndarray, str], tuple[np.ndarray, np.ndarray]]:
    """(idx (B, n), metric) → the metric per resample and label (B, 18), and the positives (B, 18)."""
    aucs = [bootstrap.auc_stat(y[:, k], score[:, k]) for k in range(y.shape[1])]
    pred = score >= thresholds
    hit = (pred == y.astype(bool)).astype(float)
    tp = (pred & y.astype(bool)).astype(float)

    def rows(idx: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
        pos = y[idx].sum(axis=1).astype(float)
        if metric == "auroc":
            return np.stack([a(idx) for a in aucs], axis=1), pos
        if metric == "accuracy":
            return hit[idx].mean(axis=1), pos
        npred, tps = pred[idx].sum(axis=1).astype(float), tp[idx].sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            if metric == "f1":
                return np.where(pos + npred > 0, 2 * tps / (pos + npred), 0.0), pos
            return np.where(npred > 0, tps / npred, 0.0), pos

    return rows


def _average(values: np.ndarray, positives: np.ndarray, weighted: bool) -> np.ndarray:
    """Mean over labels of (B, 18) values, ignoring labels undefined on a resample (NaN AUROC)."""
    valid = ~np.isnan(values)
    weights = (positives if weighted else np.ones_like(values)) * valid
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(weights.sum(axis=1) > 0,
                        np.nansum(np.where(valid, values, 0.0) * weights, axis=1) / weights.sum(axis=1), np.nan)


def summarize(pred: Predictions, n_boot: int = 0, alpha: float = 0.05, seed: int = 0) -> dict[str, float]:
    """Per-label and averaged metrics, with `<name>_ci_low/high` from `n_boot` resamples of volumes."""
    y, score = pred.y_true, pred.y_score
    out: dict[str, float] = {"n_volumes": float(len(y))}
    labels = [k for k in range(len(LABELS)) if 0 < y[:, k].sum() < len(y)]
    values = {k: per_label(y[:, k], score[:, k]) for k in labels}
    for k, m in values.items():
        out.update({f"{name}/{LABELS[k]}": m[name] for name in (*PER_LABEL, "threshold")})
    out["labels_evaluated"] = float(len(labels))
    positives = y[:, labels].sum(axis=0).astype(float)
    for name in PER_LABEL:
        column = np.array([values[k][name] for k in labels])
        out[f"{name}_macro"] = float(column.mean())
        out[f"{name}_weighted"] = float(np.average(column, weights=positives))
    # The trivial baselines: a constant score (AUROC 0.5) and "always present" (every label positive).
    prevalence = y[:, labels].mean(axis=0)
    out["baseline_auroc"] = 0.5
    out["baseline_f1_all_present_weighted"] = float(np.average(2 * prevalence / (1 + prevalence), weights=positives))
    out["baseline_accuracy_all_present_weighted"] = float(np.average(prevalence, weights=positives))
    if n_boot <= 0 or not labels:
        return out
    thresholds = np.array([values[k]["threshold"] for k in labels])
    rows = _label_rows(y[:, labels], score[:, labels], thresholds)
    stats: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    for name in PER_LABEL:
        for kind in ("macro", "weighted"):
            stats[f"{name}_{kind}"] = lambda idx, n=name, w=kind == "weighted": _average(*rows(idx, n), w)
    for k in labels:
        stats[f"auroc/{LABELS[k]}"] = bootstrap.auc_stat(y[:, k], score[:, k])
    for name, stat in stats.items():
        interval = bootstrap.bootstrap(stat, len(y), n_boot=n_boot, alpha=alpha, seed=seed)
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = interval.low, interval.high
    return out
