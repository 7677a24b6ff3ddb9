"""Zero-shot classification on the 8 ODIR classes, single-label protocol, per eye and per patient.

Eyes: every eye whose own keywords map to exactly one ODIR class is a test sample (eyes with
several classes, or with only image-quality keywords, are left out and counted). An eye is encoded
by the shared image tower and its side's projection (left or right); each class by its side's text
head over the class prompts (templates × canonical names, embeddings averaged then normalised).
Patients: every patient whose labels (implied by both eyes' keywords, as the sheet's are) are one
class; the patient feature of the eye pair against the patient text head over the report template
filled with the class name for both eyes.
The prediction is the arg-max of the scaled cosine similarities; their softmax is the score used for
one-vs-rest AUC.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from experiments.retclip.data import EyeDataset, PatientDataset, open_split
from experiments.retclip.model import RetClip
from experiments.retclip.odir import CLASSES
from experiments.retclip.prompts import Prompts, class_prompts, patient_prompts
from medrepro import metrics
from medrepro.errors import DataError


@dataclass
class Predictions:
    y_true: np.ndarray  # (n,) class index
    y_score: np.ndarray  # (n, K) softmax over classes
    n_left_out: int  # eyes (patients) not single-label
    patients: np.ndarray  # (n,) patient id of each sample: the unit the bootstrap resamples

    @property
    def y_pred(self) -> np.ndarray:
        return self.y_score.argmax(axis=1)


@torch.no_grad()
def class_embeddings(model: RetClip, tokenizer: Callable, prompts: Prompts, head: str,
                     device: torch.device) -> torch.Tensor:
    """One normalised embedding per class from `head`'s text head ("left", "right" or "patient")."""
    rows = []
    for texts in (patient_prompts(prompts) if head == "patient" else class_prompts(prompts, head)):
        emb = F.normalize(model.encode_text(tokenizer(texts).to(device), head), dim=-1)
        rows.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(rows)


@torch.no_grad()
def predict(model: RetClip, tokenizer: Callable, transform: Callable, prompts: Prompts, split_dir: Path,
            batch_size: int, device: torch.device | None = None) -> Predictions:
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    y_true, y_score, patients = [], [], []
    for side in ("left", "right"):
        classes = class_embeddings(model, tokenizer, prompts, side, device)
        scale = model.logit_scales[side].exp()
        dataset = EyeDataset(split_dir, transform, side)
        patients += [eye.patient for eye in dataset.eyes]
        for images, labels in DataLoader(dataset, batch_size=batch_size):
            feats = F.normalize(model.encode_eye(images.to(device), side), dim=-1)
            y_score.append(torch.softmax(scale * feats @ classes.t(), dim=-1).float().cpu().numpy())
            y_true.append(labels.numpy())
    model.train(was_training)
    _, _, labels_table = open_split(split_dir)
    return _predictions(y_true, y_score, patients, 2 * len(labels_table))


@torch.no_grad()
def predict_patients(model: RetClip, tokenizer: Callable, transform: Callable, prompts: Prompts, split_dir: Path,
                     batch_size: int, device: torch.device | None = None) -> Predictions:
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    classes = class_embeddings(model, tokenizer, prompts, "patient", device)
    scale = model.logit_scales["patient"].exp()
    dataset = PatientDataset(split_dir, transform)
    y_true, y_score = [], []
    for left, right, labels in DataLoader(dataset, batch_size=batch_size):
        feats = F.normalize(model.encode_eyes(left.to(device), right.to(device))["patient"], dim=-1)
        y_score.append(torch.softmax(scale * feats @ classes.t(), dim=-1).float().cpu().numpy())
        y_true.append(labels.numpy())
    model.train(was_training)
    return _predictions(y_true, y_score, [p for p, _ in dataset.patients], dataset.n_patients)


def _predictions(y_true: list, y_score: list, patients: list[int], n_total: int) -> Predictions:
    y_true_all = np.concatenate(y_true) if y_true else np.zeros(0, dtype=int)
    return Predictions(y_true_all, np.concatenate(y_score) if y_score else np.zeros((0, len(CLASSES))),
                       n_total - len(y_true_all), np.asarray(patients, dtype=int))


def summarize(pred: Predictions) -> dict[str, float]:
    """Flat metrics of one model: accuracy, balanced accuracy, F1s, per class, AUCs."""
    out = metrics.classification_metrics(pred.y_true, pred.y_pred, CLASSES, y_score=pred.y_score)
    out["n"] = float(len(pred.y_true))
    out["n_left_out"] = float(pred.n_left_out)
    return out


def predictions_json(preds: dict[str, list[Predictions]], seeds: list[int] | list[str]) -> dict:
    """predictions.json: the labels of each level once, every seed's scores (6 decimals); a released model's
    under its name instead of a seed."""
    return {"classes": list(CLASSES), "seeds": seeds, **{
        level: {"y_true": p[0].y_true.tolist(), "patients": p[0].patients.tolist(), "n_left_out": p[0].n_left_out,
                "y_score": {str(s): np.round(q.y_score, 6).tolist() for s, q in zip(seeds, p, strict=True)}}
        for level, p in preds.items()}}


def load_predictions(path: Path, level: str) -> list[Predictions]:
    """The per-seed predictions of one level back from predictions.json."""
    try:
        saved = json.loads(path.read_text())[level]
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise DataError(f"cannot read {level} predictions from {path}: {e}; re-run evaluate") from None
    y_true, patients = np.asarray(saved["y_true"], dtype=int), np.asarray(saved["patients"], dtype=int)
    return [Predictions(y_true, np.asarray(scores, dtype=float).reshape(len(y_true), len(CLASSES)),
                        saved["n_left_out"], patients) for scores in saved["y_score"].values()]
