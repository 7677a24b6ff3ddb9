"""`evaluate`: the endpoint on the test split, with bootstrap intervals that resample patients, the
majority-class baseline beside, and paired differences against every other variant.

Metrics: F1, precision and recall at `eval.threshold`; ROC-AUC; ROC-AUC at FPR <= `eval.max_fpr`
(scikit-learn's standardised partial AUC: 0.5 is chance, 1 perfect); PR-AUC (average precision).
A paired difference is this variant's metric minus the other's on the same resampled patients, so
its interval accounts for the two being scored on the same people.
"""

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, roc_auc_score

from experiments.exmed_bert import baselines, dataset
from experiments.exmed_bert.config import ExMedBertConfig
from experiments.exmed_bert.endpoint import endpoint_model, scores
from experiments.exmed_bert.experiment import BASELINES, EXPERIMENT
from medrepro import atomic, bootstrap, plots
from medrepro.device import default_device
from medrepro.errors import DataError
from medrepro.results import Evaluation
from medrepro.rundir import RunDir

HEADLINE = {"f1": "f1", "auc": "roc_auc", "pr_auc": "pr_auc"}
DIFFERENCES = ("f1", "roc_auc", "pr_auc")


def test_scores(cfg: ExMedBertConfig, variant: str, run: RunDir, which: str, records: list[dict]) -> np.ndarray:
    """Positive-class probabilities of `variant` for the test patients, in the order of test.jsonl."""
    if variant in BASELINES:
        path = run / baselines.SCORES
        if not path.is_file():
            raise DataError(f"{path} not found: run `medrepro exmed_bert train --variant {variant}` first")
        saved = json.loads(path.read_text())["test"]
        if saved["patient_id"] != [r["patient_id"] for r in records]:
            raise DataError(f"{path} scores other test patients than {cfg.paths.prepared}: train {variant} again")
        return np.array(saved["score"])
    weights = run.load(which, variant)["model"]
    vocab = dataset.read_vocab(cfg.paths.prepared)
    model = endpoint_model(cfg, vocab, {k.removeprefix("encoder."): v for k, v in weights.items()
                                        if k.startswith("encoder.")})
    model.load_state_dict(weights)
    return scores(model.to(default_device()), records, cfg.eval.batch_size, cfg.pretrain.plos_days)


def _both_classes(fn: Callable[[np.ndarray, np.ndarray], float], y: np.ndarray, p: np.ndarray
                  ) -> Callable[[np.ndarray], np.ndarray]:
    """A per-resample loop over a scikit-learn metric; NaN where a resample lacks a class."""
    def stat_rows(idx: np.ndarray) -> np.ndarray:
        return np.array([fn(y[i], p[i]) if 0 < y[i].sum() < len(i) else np.nan for i in idx])
    return stat_rows


def _counts(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (p >= threshold) & (y == 1), (p >= threshold).astype(float), y.astype(float)


def metric_rows(y: np.ndarray, p: np.ndarray, threshold: float, max_fpr: float
                ) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """name → stat_rows over resampled patients (`medrepro.bootstrap`); the threshold metrics and ROC-AUC
    are vectorised, the two areas that need sorting per resample call scikit-learn."""
    tp, predicted, actual = _counts(y, p, threshold)

    def ratio(num: np.ndarray, den: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        def rows(idx: np.ndarray) -> np.ndarray:
            a, b = num[idx].sum(axis=1), den[idx].sum(axis=1)
            return np.divide(a, b, out=np.zeros_like(a), where=b > 0)
        return rows

    return {
        "f1": bootstrap.f1_binary_stat(y, p >= threshold),
        "precision": ratio(tp.astype(float), predicted),
        "recall": ratio(tp.astype(float), actual),
        "roc_auc": bootstrap.auc_stat(y, p),
        f"roc_auc_fpr_{max_fpr:g}": _both_classes(lambda a, b: roc_auc_score(a, b, max_fpr=max_fpr), y, p),
        "pr_auc": _both_classes(average_precision_score, y, p),
    }


CI_NOTE = plots.interval_note("patients")


def roc_compared_figure(y: np.ndarray, scores_by_variant: dict[str, np.ndarray], title: str, n_boot: int,
                        alpha: float, seed: int) -> Figure:
    """The ROC curves of several variants on the same test patients, each with its AUROC's interval. The
    resamples are those of each variant's own evaluation (same patients, `n_boot` and seed), so the
    intervals are its details.json's. The experiment's variant order keeps a variant's colour across
    the variants' figures."""
    ordered = {v: scores_by_variant[v] for v in EXPERIMENT.variants if v in scores_by_variant}
    intervals = {}
    for name, p in ordered.items():
        interval = bootstrap.bootstrap(bootstrap.auc_stat(y, p), len(y), n_boot=n_boot, alpha=alpha, seed=seed)
        intervals[name] = (interval.low, interval.high)
    return plots.roc_figure(y, ordered, title, intervals, CI_NOTE)


def evaluate(cfg: ExMedBertConfig, variant: str, run: RunDir, out: Path, which: str = "best") -> Evaluation:
    records = dataset.read_split(cfg.paths.prepared, "test")
    y = np.array([r["endpoint"] for r in records])
    if y.min() == y.max():
        raise DataError(f"{cfg.paths.prepared}/test.jsonl holds one class only: the endpoint metrics need both")
    p = test_scores(cfg, variant, run, which, records)
    rows = metric_rows(y, p, cfg.eval.threshold, cfg.eval.max_fpr)
    n, boot = len(y), dict(n_boot=cfg.eval.bootstrap, alpha=cfg.eval.alpha, seed=cfg.seed)
    details: dict[str, float] = {}
    for name, stat in rows.items():
        interval = bootstrap.bootstrap(stat, n, **boot)
        details.update({name: interval.estimate, f"{name}_ci_low": interval.low, f"{name}_ci_high": interval.high})
    # The trivial baseline: always the training split's majority class, a constant score.
    majority = int(np.mean([r["endpoint"] for r in dataset.read_split(cfg.paths.prepared, "train")]) >= 0.5)
    # Predicting every patient positive: F1 = 2 positives / (patients + positives); all negative: 0.
    details.update({"majority/f1": float(2 * y.sum() / (n + y.sum())) if majority else 0.0, "majority/roc_auc": 0.5,
                    "majority/pr_auc": float(y.mean()), "test_patients": float(n), "test_positives": float(y.sum())})

    compared = {variant: p}
    for other in EXPERIMENT.variants:
        other_run = RunDir(Path(cfg.paths.runs) / other)
        if other == variant:
            continue
        if not other_run.is_complete():
            continue  # not trained (a smoke run of a subset of variants): no difference to report
        q = test_scores(cfg, other, other_run, "best", records)
        compared[other] = q
        other_rows = metric_rows(y, q, cfg.eval.threshold, cfg.eval.max_fpr)
        for name in DIFFERENCES:
            mine, theirs = rows[name], other_rows[name]
            interval = bootstrap.bootstrap(lambda idx, a=mine, b=theirs: a(idx) - b(idx), n, **boot)
            key = f"diff/{other}/{name}"
            details.update({key: interval.estimate, f"{key}_ci_low": interval.low, f"{key}_ci_high": interval.high})

    plots.roc_png(y, p, out / "plots" / "roc.png", f"exmed_bert {variant}: test ROC",
                  (details["roc_auc_ci_low"], details["roc_auc_ci_high"]), CI_NOTE)
    plots.pr_png(y, p, out / "plots" / "pr.png", f"exmed_bert {variant}: test precision-recall",
                 (details["pr_auc_ci_low"], details["pr_auc_ci_high"]), CI_NOTE)
    plots.save_figure(roc_compared_figure(y, compared, f"exmed_bert: test ROC, {variant} and the others", **boot),
                      out / "plots" / "roc_compared.png")
    atomic.write_json(out / "predictions.json", {"patient_id": [r["patient_id"] for r in records],
                                                 "endpoint": y.tolist(), "score": p.tolist()})
    coverage = json.loads((Path(cfg.paths.clinvec) / "coverage.json").read_text())
    info = {"data": cfg.data.source,
            "model": variant if variant in BASELINES else f"ExMed-BERT {cfg.model.preset}",
            "checkpoint": str(which), "compared_with": [v for v in compared if v != variant],
            "protocol": f"test split, {n} patients; {cfg.eval.bootstrap} bootstrap resamples of patients; "
                        f"threshold {cfg.eval.threshold}",
            "clinvec_coverage": coverage if variant == "clinvec_init" else None}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
    return Evaluation({short: details[name] for short, name in HEADLINE.items()}, details, info)
