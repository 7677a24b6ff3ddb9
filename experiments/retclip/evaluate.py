"""`evaluate`: zero-shot on the test split with every seed's best checkpoint; numbers, predictions, plots.

Eyes and patients are both evaluated (see zeroshot.py); details.json holds the eye-level numbers
under their plain names and the patient-level ones under `patient/`. Each number is the mean over
the training seeds, with its spread over seeds (`_sd`), its per-seed values (`/seed-<s>`) and a
95 % interval that resamples patients (see seedstats.py), beside the baselines.
`evaluate --weights` runs the same evaluation on the authors' released model (`evaluate_published`).
"""

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from experiments.retclip import published, seedstats, zeroshot
from experiments.retclip.config import RetClipConfig, seed_run
from experiments.retclip.data import EyeDataset, PatientDataset
from experiments.retclip.model import build_model
from experiments.retclip.odir import CLASS_NAMES, CLASSES
from experiments.retclip.prompts import load_prompts
from medrepro import atomic, metrics, plots
from medrepro.config_sections import encoder_path
from medrepro.device import default_device
from medrepro.errors import DataError
from medrepro.results import PUBLISHED, Evaluation
from medrepro.rundir import RunDir

# metrics.json: the headline under the suite's short names (intervals are in details.json).
HEADLINE = {"acc": "accuracy", "bal_acc": "balanced_accuracy", "f1": "f1_macro", "auc": "auroc_macro"}
LEVELS = ("eye", "patient")


def evaluate(cfg: RetClipConfig, variant: str, run: RunDir, out_dir: Path, which: str = "best") -> Evaluation:
    """`which`: "best" or "final" (every seed's), or one checkpoint file (then it stands for the only seed)."""
    seeds = cfg.seeds if which in ("best", "final") else cfg.seeds[:1]
    runs = {seed: seed_run(run, seed) for seed in seeds}
    prompts = load_prompts(Path(cfg.prompts) if cfg.prompts else None)
    lmdb = Path(cfg.paths.lmdb)
    preds: dict[str, list[zeroshot.Predictions]] = {level: [] for level in LEVELS}
    steps, scales = {}, {}
    for seed, seed_part in runs.items():
        model, tokenizer, transform = build_model(cfg.model, encoder_path(cfg.encoders, variant))
        saved = seed_part.load_into(model, which, variant)
        model.to(default_device())
        steps[seed] = saved["train_state"]["step"]
        scales.update({f"logit_scale/{h}/seed-{seed}": float(s.detach().exp()) for h, s in model.logit_scales.items()})
        args = (model, tokenizer, transform, prompts, lmdb / "test", cfg.eval.batch_size)
        preds["eye"].append(zeroshot.predict(*args))
        preds["patient"].append(zeroshot.predict_patients(*args))
    majority = majority_classes(lmdb / "train")
    result = level_summaries(cfg, preds, seeds, majority)
    result["n_seeds"] = float(len(seeds))
    result.update(scales)
    for head in ("patient", "left", "right"):
        result[f"logit_scale/{head}"] = float(np.mean([scales[f"logit_scale/{head}/seed-{s}"] for s in seeds]))

    write_plots(preds["eye"], result, variant, out_dir / "plots")
    atomic.write_json(out_dir / "predictions.json", zeroshot.predictions_json(preds, seeds))
    info = {"data": cfg.data.source, "encoder": encoder_path(cfg.encoders, variant),
            "checkpoints": {str(s): str(r.checkpoint_path(which)) for s, r in runs.items()},
            "step": {str(s): step for s, step in steps.items()}, "seeds": seeds,
            "bootstrap": {"n_boot": cfg.eval.bootstrap, "alpha": cfg.eval.alpha, "seed": cfg.seed},
            "majority_class": {level: CLASSES[c] for level, c in majority.items()},
            "protocol": "single-label eyes and patients, zero-shot; mean over training seeds; "
                        "intervals resample patients"}
    return Evaluation({short: result[name] for short, name in HEADLINE.items()}, result, info)


def evaluate_published(cfg: RetClipConfig, weights: Path, out_dir: Path) -> Evaluation:
    """The authors' released model (`published.load_release`: its architecture, tokenizer and image transform)
    through the same zero-shot evaluation, with Chinese prompts (`prompts`, default prompts_zh.yaml): the
    release was trained on Chinese reports. One model, so no spread over seeds."""
    model, tokenizer, transform = published.load_release(cfg, weights)
    model.to(default_device())
    prompts_file = Path(cfg.prompts) if cfg.prompts else published.PROMPTS
    prompts = load_prompts(prompts_file)
    lmdb = Path(cfg.paths.lmdb)
    args = (model, tokenizer, transform, prompts, lmdb / "test", cfg.eval.batch_size)
    preds = {"eye": [zeroshot.predict(*args)], "patient": [zeroshot.predict_patients(*args)]}
    majority = majority_classes(lmdb / "train")
    result = {k: v for k, v in level_summaries(cfg, preds, [0], majority).items()
              if not (k.endswith("_sd") or "/seed-" in k)}
    result.update({f"logit_scale/{h}": float(s.detach().exp()) for h, s in model.logit_scales.items()})

    write_plots(preds["eye"], result, PUBLISHED, out_dir / "plots")
    atomic.write_json(out_dir / "predictions.json", zeroshot.predictions_json(preds, [PUBLISHED]))
    info = {"data": cfg.data.source, "encoder": encoder_path(cfg.encoders, published.TEXT_TOWER),
            "checkpoint": str(weights), "prompts": {"file": str(prompts_file), "version": prompts.version},
            "bootstrap": {"n_boot": cfg.eval.bootstrap, "alpha": cfg.eval.alpha, "seed": cfg.seed},
            "majority_class": {level: CLASSES[c] for level, c in majority.items()},
            "protocol": "single-label eyes and patients, zero-shot; the released model with upstream's tokenizer "
                        "and image transform, Chinese prompts; intervals resample patients"}
    return Evaluation({short: result[name] for short, name in HEADLINE.items()}, result, info)


def level_summaries(cfg: RetClipConfig, preds: dict[str, list[zeroshot.Predictions]], seeds: list[int],
                    majority: dict[str, int]) -> dict[str, float]:
    """Every level's numbers over the seeds' predictions (seedstats.encoder_summary), the patients' under
    `patient/`; a level without single-label test samples is one line."""
    result: dict[str, float] = {}
    for level in LEVELS:
        if len(preds[level][0].y_true) == 0:
            raise DataError(f"no single-label test {level} in {Path(cfg.paths.lmdb) / 'test'}: nothing to evaluate; "
                            "give the test split more patients (data.split)")
        summary = seedstats.encoder_summary(preds[level], seeds, majority[level], cfg.eval.bootstrap,
                                            cfg.eval.alpha, cfg.seed)
        result.update(summary if level == "eye" else {f"patient/{k}": v for k, v in summary.items()})
    return result


def majority_classes(train_split: Path) -> dict[str, int]:
    """The most frequent class of the single-label training eyes and patients: the majority baseline."""
    eyes = [eye.label for side in ("left", "right") for eye in EyeDataset(train_split, None, side).eyes]
    patients = [label for _, label in PatientDataset(train_split, None).patients]
    if not eyes or not patients:
        raise DataError(f"no single-label training eyes or patients in {train_split}: nothing was trained on")
    return {"eye": int(np.bincount(eyes).argmax()), "patient": int(np.bincount(patients).argmax())}


def class_label(c: str) -> str:
    """A class as the figures name it: its full ODIR-5K name and its letter, e.g. "glaucoma (G)"."""
    return f"{CLASS_NAMES[c]} ({c})"


# The per-class bars: legend name → the metric's name in the results.
PER_CLASS = {"precision": "precision", "recall": "recall", "F1": "f1", "AUROC (one vs rest)": "auroc"}


def figures(preds: list[zeroshot.Predictions], result: dict[str, float], variant: str) -> dict[str, Figure]:
    """confusion_matrix.png and per_class.png of the test eyes, each class by its full name; a per-class
    number's interval, where the results have one, is its error bar."""
    n_seeds = len(preds)
    labels = [class_label(c) for c in CLASSES]
    cm = sum(metrics.confusion(p.y_true, p.y_pred, len(CLASSES)) for p in preds)
    confusion = plots.confusion_matrix_figure(cm, labels, f"retclip {variant}: test eyes, {n_seeds} seeds pooled",
                                              caption=f"counts: the {n_seeds} seeds' predictions added up")
    per_class: dict[str, dict[str, float]] = {label: {} for label in labels}
    for bar, name in PER_CLASS.items():
        # A class without positives in the test split has no AUROC: "n/a" on the figure.
        with_ci = any(f"{name}/{c}{plots.CI_LOW}" in result for c in CLASSES)
        for c, label in zip(CLASSES, labels, strict=True):
            per_class[label][bar] = result.get(f"{name}/{c}", float("nan"))
            if with_ci:
                for suffix in (plots.CI_LOW, plots.CI_HIGH):
                    per_class[label][bar + suffix] = result.get(f"{name}/{c}{suffix}", float("nan"))
    bars = plots.per_class_figure(
        per_class, f"retclip {variant}: per-class zero-shot (test eyes, mean of {n_seeds} seeds)",
        caption="intervals resample test patients (both eyes together), the seeds' mean in every resample",
        xlabel="ODIR-5K class")
    return {"confusion_matrix.png": confusion, "per_class.png": bars}


def write_plots(preds: list[zeroshot.Predictions], result: dict[str, float], variant: str, plot_dir: Path) -> None:
    for name, fig in figures(preds, result, variant).items():
        plots.save_figure(fig, plot_dir / name)


