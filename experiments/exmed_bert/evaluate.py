"""`evaluate`: the endpoint on the test split, with bootstrap intervals that resample patients, the
majority-class baseline beside, and paired differences against every other variant.

Metrics: F1, precision and recall at `eval.threshold`; ROC-AUC; ROC-AUC at FPR <= `eval.max_fpr`
(scikit-learn's standardised partial AUC: 0.5 is chance, 1 perfect); PR-AUC (average precision).
A paired difference is this variant's metric minus the other's on the same resampled patients, so
its interval accounts for the two being scored on the same people.

`evaluate_published` (`evaluate --weights`): the authors' released model, which is the pretraining model
only (no endpoint head), scored on its own pretraining tasks on the test patients: masked-code
prediction and prolonged length of stay (README, "Reproduce the paper from the released weights").
"""

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, roc_auc_score

from experiments.exmed_bert import baselines, dataset, published
from experiments.exmed_bert.config import ExMedBertConfig
from experiments.exmed_bert.endpoint import endpoint_model, scores
from experiments.exmed_bert.experiment import BASELINES, EXPERIMENT
from experiments.exmed_bert.pretrain import IGNORE, mask_codes, mask_seed
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


def ratio(num: np.ndarray, den: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Σ num / Σ den over each resample's patients (0 where Σ den is 0)."""
    def rows(idx: np.ndarray) -> np.ndarray:
        a, b = num[idx].sum(axis=1), den[idx].sum(axis=1)
        return np.divide(a, b, out=np.zeros_like(a), where=b > 0)
    return rows


def metric_rows(y: np.ndarray, p: np.ndarray, threshold: float, max_fpr: float
                ) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """name → stat_rows over resampled patients (`medrepro.bootstrap`); the threshold metrics and ROC-AUC
    are vectorised, the two areas that need sorting per resample call scikit-learn."""
    tp, predicted, actual = _counts(y, p, threshold)

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


TOP_K = 10


@torch.no_grad()
def masked_code_hits(model: torch.nn.Module, items: list[dict], batch_size: int, top_k: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per patient: masked codes, those predicted first, those within the `top_k` predictions; and the
    PLOS head's probability of a prolonged stay (NaN without the head)."""
    device = next(model.parameters()).device
    masked, first, within, plos_p = [], [], [], []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        batch = {k: torch.tensor([item[k] for item in chunk], device=device) for k in chunk[0]}
        logits, plos = model(batch)
        labels = batch["labels"]
        chosen = labels != IGNORE
        ranked = logits.float().topk(top_k, dim=-1).indices
        first.append(((ranked[..., 0] == labels) & chosen).sum(dim=1).cpu())
        within.append(((ranked == labels[..., None]).any(dim=-1) & chosen).sum(dim=1).cpu())
        masked.append(chosen.sum(dim=1).cpu())
        plos_p.append(torch.softmax(plos.float(), -1)[:, 1].cpu() if plos is not None
                      else torch.full((len(chunk),), float("nan")))
    return tuple(torch.cat(x).double().numpy() for x in (masked, first, within, plos_p))


def evaluate_published(cfg: ExMedBertConfig, weights: Path, out_dir: Path) -> Evaluation:
    """The released pretraining model (`published.read_release`) on the test patients: masked-code accuracy
    (first and within the top 10) beside the most frequent code of the training split, and the PLOS head's
    ROC-AUC beside chance; intervals resample patients. Masks as pretraining's validation draws them:
    keyed by (seed + 1, epoch 0, patient), with `pretrain.mask_probability`."""
    release = published.read_release(weights)
    model = published.release_model(release, weights).to(default_device())
    vocab = dataset.read_vocab(cfg.paths.prepared)
    records = dataset.read_split(cfg.paths.prepared, "test")
    encoded, counts = published.encode_records(records, vocab, release)
    # A patient left with no code the release knows (procedures only) has nothing to attend to; upstream
    # drops far shorter sequences (its min_observations, 5 codes).
    kept = [i for i, e in enumerate(encoded) if any(e["attention"])]
    counts["patients_without_codes"] = len(records) - len(kept)
    records, encoded = [records[i] for i in kept], [encoded[i] for i in kept]
    first_code = published.first_code(release.vocabularies)
    items = []
    for i, e in enumerate(encoded):
        generator = torch.Generator().manual_seed(mask_seed(cfg.seed + 1, 0, i))
        tokens, labels = mask_codes(e["tokens"], e["types"], len(release.vocabularies.codes),
                                    cfg.pretrain.mask_probability, generator, first_code)
        items.append({**e, "tokens": tokens, "labels": labels})
    masked, first, within, plos_p = masked_code_hits(model, items, cfg.eval.batch_size, TOP_K)
    if not masked.sum():
        raise DataError(f"{cfg.paths.prepared}/test.jsonl: none of the test patients' codes is in the release's "
                        f"vocabulary (share known by vocabulary: {published.coverage(counts)}): nothing to predict")
    # The trivial baseline: the training split's most frequent code (in the release's vocabulary), always.
    train, _ = published.encode_records(dataset.read_split(cfg.paths.prepared, "train"), vocab, release)
    frequent = Counter(t for e in train for t, kind in zip(e["tokens"], e["types"], strict=True)
                       if t >= first_code)
    most_frequent = frequent.most_common(1)[0][0] if frequent else first_code
    baseline = np.array([sum(label == most_frequent for label in item["labels"]) for item in items], dtype=float)

    n, boot = len(items), dict(n_boot=cfg.eval.bootstrap, alpha=cfg.eval.alpha, seed=cfg.seed)
    details: dict[str, float] = {}

    def add(name: str, stat: Callable[[np.ndarray], np.ndarray], size: int) -> None:
        interval = bootstrap.bootstrap(stat, size, **boot)
        details.update({name: interval.estimate, f"{name}_ci_low": interval.low, f"{name}_ci_high": interval.high})

    add("mlm_accuracy", ratio(first, masked), n)
    add(f"mlm_top{TOP_K}", ratio(within, masked), n)
    add("most_frequent/mlm_accuracy", ratio(baseline, masked), n)
    stays = dataset.pad_batch(records, cfg.pretrain.plos_days)["plos"].numpy()
    known = (stays != IGNORE) & ~np.isnan(plos_p)
    y, p = stays[known], plos_p[known]
    if 0 < y.sum() < len(y):
        add("plos_roc_auc", bootstrap.auc_stat(y, p), len(y))
        details.update({"chance/plos_roc_auc": 0.5, "plos_positive_rate": float(y.mean())})
        plots.roc_png(y, p, out_dir / "plots" / "plos_roc.png", "exmed_bert published: PLOS on the test patients",
                      (details["plos_roc_auc_ci_low"], details["plos_roc_auc_ci_high"]), CI_NOTE)
    details.update({"test_patients": float(n), "masked_codes": float(masked.sum()), "plos_patients": float(len(y))})
    atomic.write_json(out_dir / "predictions.json", {
        "patient_id": [r["patient_id"] for r in records], "masked": masked.tolist(), "first": first.tolist(),
        f"top{TOP_K}": within.tolist(), "plos_probability": [None if np.isnan(v) else v for v in plos_p.tolist()]})
    info = {"data": cfg.data.source, "model": "ExMed-BERT, released pretraining model", "checkpoint": str(weights),
            "protocol": f"test split, {n} patients; masked-code prediction ({cfg.pretrain.mask_probability:g} of "
                        f"the codes, BERT's 80/10/10) and PLOS (stay > {cfg.pretrain.plos_days} days); "
                        f"{cfg.eval.bootstrap} bootstrap resamples of patients",
            "selection": "none here: the release was trained and chosen upstream on its own claims data",
            "vocabulary": {"coverage": published.coverage(counts), "counts": dict(counts),
                           "most_frequent_code": release.vocabularies.codes[most_frequent]}}
    headline = {"mlm_acc": details["mlm_accuracy"], f"mlm_top{TOP_K}": details[f"mlm_top{TOP_K}"]}
    if "plos_roc_auc" in details:
        headline["plos_auc"] = details["plos_roc_auc"]
    return Evaluation(headline, details, info)
