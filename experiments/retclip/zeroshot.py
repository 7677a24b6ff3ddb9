"""Zero-shot classification on the 8 ODIR classes, single-label protocol.

Protocol: every eye whose own keywords map to exactly one ODIR class is a test sample (eyes with
several classes, or with only image-quality keywords, are left out and counted). An eye is encoded
by the shared image tower and its side's projection (left or right); each class by its side's text
head over the class prompts (templates × canonical names, embeddings averaged then normalised). The
prediction is the arg-max of the scaled cosine similarities; their softmax is the score used for
one-vs-rest AUC.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from experiments.retclip.data import EyeDataset, open_split
from experiments.retclip.model import RetClip
from experiments.retclip.odir import CLASSES
from experiments.retclip.prompts import Prompts, class_prompts
from medrepro import bootstrap, metrics


@dataclass
class Predictions:
    y_true: np.ndarray  # (n,) class index
    y_score: np.ndarray  # (n, K) softmax over classes
    n_left_out: int  # eyes not single-label

    @property
    def y_pred(self) -> np.ndarray:
        return self.y_score.argmax(axis=1)


@torch.no_grad()
def class_embeddings(model: RetClip, tokenizer: Callable, prompts: Prompts, side: str,
                     device: torch.device) -> torch.Tensor:
    rows = []
    for texts in class_prompts(prompts, side):
        emb = F.normalize(model.encode_text(tokenizer(texts).to(device), side), dim=-1)
        rows.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(rows)


@torch.no_grad()
def predict(model: RetClip, tokenizer: Callable, transform: Callable, prompts: Prompts, split_dir: Path,
            batch_size: int, device: torch.device | None = None) -> Predictions:
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    y_true, y_score = [], []
    for side in ("left", "right"):
        classes = class_embeddings(model, tokenizer, prompts, side, device)
        scale = model.logit_scales[side].exp()
        for images, labels in DataLoader(EyeDataset(split_dir, transform, side), batch_size=batch_size):
            feats = F.normalize(model.encode_eye(images.to(device), side), dim=-1)
            y_score.append(torch.softmax(scale * feats @ classes.t(), dim=-1).float().cpu().numpy())
            y_true.append(labels.numpy())
    model.train(was_training)
    _, _, labels_table = open_split(split_dir)
    n_eyes = 2 * len(labels_table)
    y_true_all = np.concatenate(y_true) if y_true else np.zeros(0, dtype=int)
    return Predictions(y_true_all, np.concatenate(y_score) if y_score else np.zeros((0, len(CLASSES))),
                       n_eyes - len(y_true_all))


def summarize(pred: Predictions, n_boot: int = 0, alpha: float = 0.05, seed: int = 0) -> dict[str, float]:
    """Flat metrics (accuracy, balanced accuracy, F1s, per class, AUCs) with bootstrap CIs when n_boot > 0."""
    k = len(CLASSES)
    out = metrics.classification_metrics(pred.y_true, pred.y_pred, CLASSES, y_score=pred.y_score)
    out["n_eyes"] = float(len(pred.y_true))
    out["n_eyes_left_out"] = float(pred.n_left_out)
    out["chance_accuracy"] = 1.0 / k
    if n_boot <= 0:
        return out
    n = len(pred.y_true)
    stats = {
        "accuracy": bootstrap.accuracy_stat(pred.y_true, pred.y_pred),
        "balanced_accuracy": bootstrap.balanced_accuracy_stat(pred.y_true, pred.y_pred, k),
        "f1_macro": bootstrap.f1_macro_stat(pred.y_true, pred.y_pred, k),
    }
    for c, name in enumerate(CLASSES):
        if f"auc/{name}" in out:
            stats[f"auc/{name}"] = bootstrap.auc_stat(pred.y_true == c, pred.y_score[:, c])
    for name, stat in stats.items():
        interval = bootstrap.bootstrap(stat, n, n_boot=n_boot, alpha=alpha, seed=seed)
        out[f"{name}_ci_low"] = interval.low
        out[f"{name}_ci_high"] = interval.high
    return out
