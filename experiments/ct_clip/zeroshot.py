"""Zero-shot multi-label classification of the 18 CT-RATE abnormalities, with bootstrap intervals.

Each label has the prompt pair "{label} is present." / "{label} is not present."; a volume's score for
the label is the softmax over the pair of exp(temperature) × cosine, positive side. The 36 prompts are
encoded once and each volume once (upstream re-encodes the volume for every label: 18 passes).

Per label, at upstream's threshold (`upstream_threshold`), as upstream's scripts/bootstrap_values.py:
    auroc        area under the ROC curve (no threshold)
    f1           scikit-learn's f1_score(average="weighted"): the F1 of "present" and of "absent",
                 weighted by their support (the paper's F1)
    accuracy     the share of volumes decided right
    precision    of "present"
    f1_positive  the F1 of "present" alone (the usual definition; not the paper's)
Averages over the labels: `_macro` is the plain mean (the paper's), `_weighted` weights each label by
its positives. Baselines under the same definitions: every label absent, every label present, and
each label's prevalence as a constant score. Intervals: the percentile bootstrap over patients (a
CT-RATE patient has several scans and reconstructions, which are not independent), `n_boot`
resamples; the thresholds stay those chosen on the full set.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from experiments.ct_clip.ctrate import LABELS, patient_of
from experiments.ct_clip.data import ShardDataset
from experiments.ct_clip.model import CTClip, tokenize
from experiments.ct_clip.prompts import prompts
from medrepro import bootstrap

PER_LABEL = ("auroc", "f1", "accuracy", "precision", "f1_positive")
# Upstream tries these thresholds and keeps the last of the closest to the ROC corner.
THRESHOLDS = np.linspace(0, 1, 100)
BASELINES = ("all_absent", "all_present", "prevalence")


@dataclass
class Predictions:
    volumes: list[str]  # CT-RATE volume names (shard keys)
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
    volumes = [key for _, key, _ in dataset.items]
    return Predictions(volumes, np.concatenate(y_true), np.concatenate(y_score).astype(np.float64), passes)


def upstream_threshold(y: np.ndarray, score: np.ndarray) -> float:
    """Upstream's `find_threshold`: of 100 thresholds evenly spaced over [0, 1], deciding "present" where
    the score is above it, the one whose (FPR, TPR) lies closest to (0, 1); of equally close ones, the
    highest (upstream compares with `<=`)."""
    y = y.astype(bool)
    decided = score[None, :] > THRESHOLDS[:, None]
    tpr = (decided & y).sum(axis=1) / y.sum()
    fpr = (decided & ~y).sum(axis=1) / (~y).sum()
    distance = np.hypot(fpr, 1 - tpr)
    return float(THRESHOLDS[np.flatnonzero(distance == distance.min())[-1]])


def count_metrics(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> dict[str, np.ndarray]:
    """The thresholded metrics from confusion counts (any shape), with scikit-learn's zero_division=0."""
    pos, neg = tp + fn, tn + fp
    with np.errstate(divide="ignore", invalid="ignore"):
        f1_pos = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        f1_neg = np.where(2 * tn + fp + fn > 0, 2 * tn / (2 * tn + fp + fn), 0.0)
        return {"f1": (pos * f1_pos + neg * f1_neg) / (pos + neg), "accuracy": (tp + tn) / (pos + neg),
                "precision": np.where(tp + fp > 0, tp / (tp + fp), 0.0), "f1_positive": f1_pos}


def _label_rows(y: np.ndarray, score: np.ndarray, decided: np.ndarray,
                ) -> Callable[[np.ndarray, str], tuple[np.ndarray, np.ndarray]]:
    """(idx (B, n), metric) → the metric per resample and label (B, L), and the positives (B, L)."""
    aucs = [bootstrap.auc_stat(y[:, k], score[:, k]) for k in range(y.shape[1])]
    cells = {"tp": decided & y, "fp": decided & ~y, "fn": ~decided & y, "tn": ~decided & ~y}

    def rows(idx: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
        pos = y[idx].sum(axis=1).astype(float)
        if metric == "auroc":
            return np.stack([a(idx) for a in aucs], axis=1), pos
        counts = {name: cell[idx].sum(axis=1).astype(float) for name, cell in cells.items()}
        return count_metrics(**counts)[metric], pos

    return rows


def _average(values: np.ndarray, positives: np.ndarray, weighted: bool) -> np.ndarray:
    """Mean over labels of (B, L) values, ignoring labels undefined on a resample (NaN AUROC)."""
    valid = ~np.isnan(values)
    weights = (positives if weighted else np.ones_like(values)) * valid
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(weights.sum(axis=1) > 0,
                        np.nansum(np.where(valid, values, 0.0) * weights, axis=1) / weights.sum(axis=1), np.nan)


def _baselines(y: np.ndarray) -> dict[str, float]:
    """Every headline metric of the three trivial predictors, averaged as the model's."""
    n, labels = y.shape
    prevalence = np.broadcast_to(y.mean(axis=0), y.shape)
    thresholds = np.array([upstream_threshold(y[:, k], prevalence[:, k]) for k in range(labels)])
    decisions = {"all_absent": np.zeros_like(y), "all_present": np.ones_like(y), "prevalence": prevalence > thresholds}
    out = {}
    for name, decided in decisions.items():
        rows = _label_rows(y, prevalence, decided)
        for metric in PER_LABEL:
            values, positives = rows(np.arange(n)[None], metric)
            for kind in ("macro", "weighted"):
                out[f"baseline/{name}/{metric}_{kind}"] = float(_average(values, positives, kind == "weighted")[0])
    return out


def summarize(pred: Predictions, n_boot: int = 0, alpha: float = 0.05, seed: int = 0,
              unit: str = "patient") -> dict[str, float]:
    """Per-label and averaged metrics and the baselines, with `<name>_ci_low/high` from `n_boot`
    resamples of `unit` ("patient", or "volume" to see how much narrower that would be)."""
    y, score = pred.y_true.astype(bool), pred.y_score
    patients = np.array([patient_of(v) for v in pred.volumes])
    out: dict[str, float] = {"n_volumes": float(len(y)), "n_patients": float(len(set(patients)))}
    labels = [k for k in range(len(LABELS)) if 0 < y[:, k].sum() < len(y)]
    out["labels_evaluated"] = float(len(labels))
    if not labels:
        return out
    y, score = y[:, labels], score[:, labels]
    thresholds = np.array([upstream_threshold(y[:, j], score[:, j]) for j in range(len(labels))])
    rows = _label_rows(y, score, score > thresholds)
    everyone = np.arange(len(y))[None]
    for name in PER_LABEL:
        values, positives = rows(everyone, name)
        out.update({f"{name}/{LABELS[k]}": float(v) for k, v in zip(labels, values[0], strict=True)})
        for kind in ("macro", "weighted"):
            out[f"{name}_{kind}"] = float(_average(values, positives, kind == "weighted")[0])
    out.update({f"threshold/{LABELS[k]}": float(t) for k, t in zip(labels, thresholds, strict=True)})
    out.update(_baselines(y))
    if n_boot <= 0:
        return out
    if unit not in ("patient", "volume"):
        raise ValueError(f"unit is patient or volume, got {unit!r}")
    clusters = patients if unit == "patient" else np.arange(len(y))
    stats: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    for name in PER_LABEL:
        for kind in ("macro", "weighted"):
            stats[f"{name}_{kind}"] = lambda idx, n=name, w=kind == "weighted": _average(*rows(idx, n), w)
    for j, k in enumerate(labels):
        stats[f"auroc/{LABELS[k]}"] = bootstrap.auc_stat(y[:, j], score[:, j])
    for name, stat in stats.items():
        interval = bootstrap.bootstrap_clusters(stat, clusters, n_boot=n_boot, alpha=alpha, seed=seed)
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = interval.low, interval.high
    return out
