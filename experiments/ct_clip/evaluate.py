"""`evaluate`: zero-shot on every validation volume with the best checkpoint (chosen on training patients
held out for selection, never on these); numbers, predictions, plots."""

import json
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from experiments.ct_clip import zeroshot
from experiments.ct_clip.config import SELECTION_FILE, CtClipConfig
from experiments.ct_clip.ctrate import LABELS, patient_of
from experiments.ct_clip.data import ShardDataset
from experiments.ct_clip.model import build_model
from experiments.ct_clip.published import TEXT_TOWER, load_release
from medrepro import atomic, plots
from medrepro.config_sections import encoder_path
from medrepro.device import default_device
from medrepro.errors import DataError
from medrepro.results import Evaluation
from medrepro.rundir import RunDir

# metrics.json under the suite's short names: the paper's mean AUROC, F1 and accuracy.
HEADLINE = {"auc": "auroc_macro", "f1": "f1_macro", "acc": "accuracy_macro"}


# What every dot of the ROC panels is: upstream_threshold's rule, where the paper's thresholded metrics are taken.
OPERATING_POINT = ("operating point at the paper's threshold: of 100 thresholds in [0, 1], the one whose (FPR, TPR) "
                   "lies closest to (0, 1); F1, accuracy and precision are measured there")
CI_NOTE = plots.interval_note("patients")


def auroc_text(result: dict[str, float], name: str) -> str:
    """`name`'s value with its interval where the results have one, e.g. "0.758 [0.583, 0.891]"."""
    return plots.interval_text(result[name], result.get(f"{name}_ci_low"), result.get(f"{name}_ci_high"))


def auroc_figure(result: dict[str, float], title: str) -> Figure:
    """Per-label AUROC with its bootstrap interval, and the mean AUROC's interval as a band."""
    names = [label for label in LABELS if f"auroc/{label}" in result]
    value = np.array([result[f"auroc/{n}"] for n in names])
    low = np.array([result.get(f"auroc/{n}_ci_low", np.nan) for n in names])
    high = np.array([result.get(f"auroc/{n}_ci_high", np.nan) for n in names])
    fig = Figure(figsize=(7, 0.32 * len(names) + 1.5))
    ax = fig.add_subplot()
    y = np.arange(len(names))
    ax.errorbar(value, y, xerr=[value - low, high - value], fmt="o", color="tab:blue", capsize=3,
                label=f"AUROC of the abnormality, bars: {CI_NOTE}")
    ax.axvspan(result.get("auroc_macro_ci_low", np.nan), result.get("auroc_macro_ci_high", np.nan), color="tab:green",
               alpha=0.2, label=f"mean AUROC over the abnormalities {auroc_text(result, 'auroc_macro')} (band: "
                                "its interval)")
    ax.axvline(0.5, color="grey", linestyle="--", label=plots.CHANCE_ROC)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("AUROC")
    ax.set_title(title)
    # Below the axes: inside, it covers the intervals of the labels at the bottom.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=7, frameon=False)
    return fig


def roc_grid_figure(pred: zeroshot.Predictions, result: dict[str, float], title: str) -> Figure:
    """One ROC panel per label in a 3 × 6 grid, titled with the label's AUROC and its interval, with the
    operating point of the threshold `summarize` chose; a label that the volumes show with one class only
    has no curve and says so."""
    fig = Figure(figsize=(15, 8.5), layout="constrained")
    axes = fig.subplots(3, 6, sharex=True, sharey=True)
    for k, ax in enumerate(axes.flat):
        label = LABELS[k]
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label=plots.CHANCE_ROC)
        if f"threshold/{label}" not in result:
            ax.set_title(f"{label}\nnot evaluated: one class only", fontsize=8)
            continue
        ax.set_title(f"{label}\nAUROC {auroc_text(result, f'auroc/{label}')}", fontsize=8)
        y, score = pred.y_true[:, k], pred.y_score[:, k]
        plots.roc_line(ax, y, score, color="tab:blue", label="ROC curve")
        decided = score > result[f"threshold/{label}"]
        ax.plot(decided[y == 0].mean(), decided[y == 1].mean(), "o", color="tab:red", markersize=4,
                label=OPERATING_POINT)
    for ax in axes[-1]:
        ax.set_xlabel("false positive rate", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("true positive rate", fontsize=8)
    # Every artist once, from whichever panels drew it.
    legend = {text: handle for ax in axes.flat for handle, text in zip(*ax.get_legend_handles_labels(), strict=True)}
    with_ci = any(f"auroc/{label}_ci_low" in result for label in LABELS)
    fig.legend(legend.values(), legend.keys(), loc="outside lower center", frameon=False, fontsize=8,
               title=f"AUROC in each panel's title [{CI_NOTE}]" if with_ci else None, title_fontsize=8)
    fig.suptitle(title)
    return fig


def selection_of(run: RunDir, volumes: list[str]) -> dict:
    """The run's selection record, after checking that none of `volumes`' patients chose its checkpoint."""
    path = run / SELECTION_FILE
    if not path.is_file():
        raise DataError(f"{path} is missing: the run does not say which patients chose its best checkpoint; "
                        "train it again with this version")
    selection = json.loads(path.read_text())
    shared = sorted(set(selection["patients"]) & {patient_of(v) for v in volumes})
    if shared:
        raise DataError(f"{len(shared)} evaluated patients (e.g. {shared[0]}) chose the checkpoint of {run}: "
                        "evaluate on patients the run neither trained on nor selected with")
    return selection


def evaluate(cfg: CtClipConfig, variant: str, run: RunDir, out_dir: Path, which: str = "best") -> Evaluation:
    dataset = ShardDataset(Path(cfg.paths.shards) / "valid" / "manifest.json")
    selection = selection_of(run, [key for _, key, _ in dataset.items])
    model, tokenizer = build_model(cfg.model, tuple(cfg.data.shape), encoder_path(cfg.encoders, variant))
    saved = run.load_into(model, which, variant)
    info = {"encoder": encoder_path(cfg.encoders, variant), "checkpoint": str(run.checkpoint_path(which)),
            "step": saved["train_state"]["step"],
            "selection": f"{len(selection['patients'])} training patients ({len(selection['volumes'])} volumes) "
                         "held out from training, none evaluated"}
    return zero_shot(cfg, model, tokenizer, dataset, variant, out_dir, info)


def evaluate_published(cfg: CtClipConfig, weights: Path, out_dir: Path) -> Evaluation:
    """The authors' released model (`published.load_release`) through the same zero-shot evaluation."""
    model, tokenizer = load_release(cfg, weights)
    dataset = ShardDataset(Path(cfg.paths.shards) / "valid" / "manifest.json")
    info = {"encoder": encoder_path(cfg.encoders, TEXT_TOWER), "checkpoint": str(weights),
            "selection": "none here: the released model was trained and chosen upstream, on CT-RATE's training "
                         "split; evaluate it on volumes outside that split"}
    return zero_shot(cfg, model, tokenizer, dataset, "published", out_dir, info)


def zero_shot(cfg: CtClipConfig, model: torch.nn.Module, tokenizer, dataset: ShardDataset, name: str,
              out_dir: Path, info: dict) -> Evaluation:
    """The zero-shot evaluation of `model` on `dataset`: metrics, plots and predictions; `info` is added to
    what every evaluation records."""
    model.to(default_device())
    pred = zeroshot.predict(model, tokenizer, dataset, cfg.eval.batch_size, cfg.model.context_length)
    result = zeroshot.summarize(pred, cfg.eval.bootstrap, cfg.eval.alpha, cfg.seed)
    result["temperature"] = float(model.temperature.detach())
    plots.save_figure(auroc_figure(result, f"ct_clip {name}: zero-shot AUROC per abnormality"),
                      out_dir / "plots" / "auroc_per_label.png")
    plots.save_figure(roc_grid_figure(pred, result, f"ct_clip {name}: zero-shot ROC curves"),
                      out_dir / "plots" / "roc_curves.png")
    atomic.write_json(out_dir / "predictions.json", {
        "labels": list(LABELS), "volumes": pred.volumes,
        "y_true": pred.y_true.tolist(), "y_score": np.round(pred.y_score, 6).tolist(),
    })
    info = {"data": cfg.data.source, "release": cfg.data.release, **info,
            "protocol": "zero-shot, 18 labels, prompt pair softmax, upstream's threshold, bootstrap over patients",
            "bootstrap": cfg.eval.bootstrap, "report_fields": list(cfg.data.report_fields)}
    return Evaluation({short: result[name] for short, name in HEADLINE.items()}, result, info)
