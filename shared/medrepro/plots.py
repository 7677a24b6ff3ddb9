"""PNG figures for evaluation reports.

Matrices and the precision-recall and reliability curves are drawn by scikit-learn's displays
(`ConfusionMatrixDisplay`, `PrecisionRecallDisplay`, `CalibrationDisplay`) on our own axes; ROC curves
by `roc_line`, which also draws into an experiment's grid of panels. Figures are built with
`matplotlib.figure.Figure` rather than pyplot: nothing is registered in pyplot's global figure list
(so nothing leaks across thousands of calls), and no GUI backend is ever selected, so this works on a
headless container without touching the process-wide backend. Legends sit below the axes, where
they cover no curve, reference line or bar. Each `*_png` writes what its `*_figure` returns, so a
test can read a figure's titles and legend before it becomes pixels.
"""

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from sklearn.calibration import CalibrationDisplay
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    PrecisionRecallDisplay,
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from medrepro import atomic

DPI = 150
CI_LOW, CI_HIGH = "_ci_low", "_ci_high"
CI_NOTE = "95 % bootstrap interval"
# A constant score (the majority class, or nothing learned) ranks no positive above a negative.
CHANCE_ROC = "chance / constant score (AUROC 0.5)"


def save_figure(fig: Figure, path: str | Path) -> None:
    """Write `fig` as a PNG atomically; the format is explicit because the temporary name ends in .tmp."""
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight"))


def _legend_below(ax, ncol: int = 1, title: str | None = None) -> None:
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol, frameon=False, title=title,
              title_fontsize="small")


def interval_note(unit: str) -> str:
    """How an interval was drawn, for a legend: e.g. "95 % bootstrap interval, patients resampled"."""
    return f"{CI_NOTE}, {unit} resampled"


def interval_text(value: float, low: float | None = None, high: float | None = None, digits: int = 3) -> str:
    """"0.758 [0.651, 0.854]"; the value alone where the interval is missing (no bootstrap, or undefined)."""
    text = f"{value:.{digits}f}"
    if _is_missing(low) or _is_missing(high):
        return text
    return f"{text} [{low:.{digits}f}, {high:.{digits}f}]"


def confusion_matrix_png(cm: np.ndarray, class_names: Sequence[str], path: str | Path, title: str,
                         caption: str = "") -> None:
    save_figure(confusion_matrix_figure(cm, class_names, title, caption), path)


def confusion_matrix_figure(cm: np.ndarray, class_names: Sequence[str], title: str, caption: str = "") -> Figure:
    """Counts in each cell; colour is the row-normalised fraction so rare classes stay readable.
    `class_names` may be long (full names): the predicted-axis labels are anchored at their ends."""
    cm = np.asarray(cm)
    n_classes = len(class_names)
    if cm.shape != (n_classes, n_classes):
        raise ValueError(f"confusion matrix shape {cm.shape} does not match {n_classes} class names")
    row_sums = cm.sum(axis=1, keepdims=True)
    fraction = np.divide(cm, row_sums, out=np.zeros(cm.shape), where=row_sums > 0)

    side = max(4.0, 0.6 * n_classes + 2)
    fig = Figure(figsize=(side + 1, side), layout="constrained")
    ax = fig.add_subplot()
    display = ConfusionMatrixDisplay(fraction, display_labels=list(class_names))
    display.plot(ax=ax, cmap="Blues", colorbar=False, values_format=".2f")
    # Rotated about their right end, so a long label ends under its own column.
    ax.tick_params(axis="x", labelrotation=45)
    for label in ax.get_xticklabels():
        label.set(ha="right", rotation_mode="anchor")
    display.im_.set_clim(0.0, 1.0)
    for (i, j), text in np.ndenumerate(display.text_):
        # Counts, on the colour of the fraction, in a colour readable on it.
        text.set_text(f"{cm[i, j]:g}")
        text.set_color("white" if fraction[i, j] > 0.5 else "black")
    # In an inset beside the square matrix, so the bar is as tall as the matrix and clear of the title.
    fig.colorbar(display.im_, cax=ax.inset_axes((1.04, 0.0, 0.05, 1.0)), label="fraction of true class")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if caption:
        fig.supxlabel(caption, fontsize=8)
    return fig


def _is_missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def per_class_png(per_class: Mapping[str, Mapping[str, float | None]], path: str | Path, title: str,
                  caption: str = "", ylabel: str = "score", xlabel: str = "class") -> None:
    save_figure(per_class_figure(per_class, title, caption, ylabel, xlabel), path)


def per_class_figure(per_class: Mapping[str, Mapping[str, float | None]], title: str, caption: str = "",
                     ylabel: str = "score", xlabel: str = "class") -> Figure:
    """Grouped bars: one group per class, one bar per metric (e.g. precision, recall, f1).

    Every class must report the same metrics; their order is taken from the first class. A metric
    `m` may come with `m_ci_low` and `m_ci_high` (a bootstrap interval), drawn as an error bar; when
    some metrics have one, the legend marks the others "(no interval)". A missing value (None or nan,
    e.g. precision of a class never predicted) is marked "n/a" at the base of its slot, a zero bar "0",
    so the two cannot be confused. `caption` goes under the figure
    (e.g. how the intervals were drawn). The legend sits above the title, clear of the bars.
    """
    if not per_class:
        raise ValueError("per_class is empty: nothing to plot")
    class_names = list(per_class)
    keys = list(per_class[class_names[0]])
    for name in class_names:
        if set(per_class[name]) != set(keys):
            raise ValueError(f"class '{name}' reports {sorted(per_class[name])}, expected {sorted(keys)}")
    metric_names = [k for k in keys if not k.endswith((CI_LOW, CI_HIGH))]
    has_ci = {m: m + CI_LOW in keys and m + CI_HIGH in keys for m in metric_names}

    values = [per_class[name][m] for name in class_names for m in metric_names]
    top = max([1.0, *(v for v in values if not _is_missing(v))])
    x = np.arange(len(class_names))
    width = 0.8 / len(metric_names)
    # Constrained layout keeps the legend above the axes and the caption at the bottom, clear of the bars.
    # Class names wrapped onto lines of at most 16 characters, level under their groups.
    tick_labels = [textwrap.fill(name, 16) for name in class_names]
    extra_lines = max(label.count("\n") for label in tick_labels)
    fig = Figure(figsize=(max(6.0, 1.2 * len(class_names) + 2), 5.0 + 0.2 * extra_lines), layout="constrained")
    ax = fig.add_subplot()
    for m, metric in enumerate(metric_names):
        centers = x + (m - (len(metric_names) - 1) / 2) * width
        heights = np.array([np.nan if _is_missing(v) else v for v in (per_class[c][metric] for c in class_names)],
                           dtype=float)
        label = metric if has_ci[metric] or not any(has_ci.values()) else f"{metric} (no interval)"
        bars = ax.bar(centers, np.nan_to_num(heights), width, label=label)
        if has_ci[metric]:
            low = np.array([per_class[c][metric + CI_LOW] for c in class_names], dtype=float)
            high = np.array([per_class[c][metric + CI_HIGH] for c in class_names], dtype=float)
            shown = ~(np.isnan(heights) | np.isnan(low) | np.isnan(high))
            errors = np.vstack([heights - low, high - heights])[:, shown].clip(min=0)
            ax.errorbar(centers[shown], heights[shown], yerr=errors, fmt="none", ecolor="black", capsize=2,
                        linewidth=0.8)
        for center, height, bar in zip(centers, heights, bars, strict=True):
            if np.isnan(height) or height == 0:
                ax.text(center, 0.01 * top, "n/a" if np.isnan(height) else "0", ha="center", va="bottom",
                        fontsize=6, color="dimgrey" if np.isnan(height) else bar.get_facecolor())
    ax.set_xticks(x, labels=tick_labels, fontsize=9)
    ax.set_ylim(0.0, 1.05 * top)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    any_ci = any(has_ci.values())
    if any_ci:
        ax.errorbar([], [], yerr=[], fmt="none", ecolor="black", capsize=2, label=CI_NOTE)
    fig.legend(loc="outside upper center", ncol=len(metric_names) + any_ci, frameon=False)
    if caption:
        fig.supxlabel(caption, fontsize=8)
    return fig


def reliability_png(y_true: np.ndarray, probs: Mapping[str, np.ndarray], path: str | Path, title: str,
                    n_bins: int = 15) -> None:
    save_figure(reliability_figure(y_true, probs, title, n_bins), path)


def reliability_figure(y_true: np.ndarray, probs: Mapping[str, np.ndarray], title: str, n_bins: int = 15) -> Figure:
    """Reliability diagram (`CalibrationDisplay`): fraction of positives against mean predicted
    probability per equal-width bin, one line per entry of `probs` (e.g. before and after
    calibration), with the diagonal, and a histogram of the first entry's probabilities underneath."""
    if not probs:
        raise ValueError("probs is empty: nothing to plot")
    fig = Figure(figsize=(5.5, 7.0))
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    for i, (label, prob) in enumerate(probs.items()):
        CalibrationDisplay.from_predictions(y_true, prob, n_bins=n_bins, strategy="uniform", ax=top, name=label,
                                            ref_line=i == 0)
    top.set_xlabel("")
    top.set_ylabel("fraction of positives")
    top.set_ylim(-0.02, 1.02)
    top.set_title(title)
    first = next(iter(probs.values()))
    bottom.hist(first, bins=n_bins, range=(0, 1), color="tab:blue", alpha=0.7)
    bottom.set_yscale("log")
    bottom.set_xlabel("predicted probability of the positive class")
    bottom.set_ylabel(f"count ({next(iter(probs))})")
    top.get_legend().remove()  # one legend, under the histogram, where it covers no line
    bottom.legend(*top.get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=2,
                  frameon=False)
    return fig


def roc_line(ax: Axes, y_true: np.ndarray, score: np.ndarray, **line_kwargs) -> Line2D:
    """One ROC curve on `ax`: scikit-learn's (FPR, TPR) points, joined by straight segments."""
    fpr, tpr, _ = roc_curve(y_true, score)
    (line,) = ax.plot(fpr, tpr, **line_kwargs)
    return line


def roc_png(y_true: np.ndarray, prob: np.ndarray, path: str | Path, title: str,
            interval: tuple[float, float] | None = None, ci_note: str = CI_NOTE) -> None:
    save_figure(roc_figure(y_true, {"model": prob}, title, {"model": interval} if interval else None, ci_note), path)


def roc_figure(y_true: np.ndarray, scores: Mapping[str, np.ndarray], title: str,
               intervals: Mapping[str, tuple[float, float]] | None = None, ci_note: str = CI_NOTE) -> Figure:
    """The ROC curves of one or more scorers of the same samples, each named in the legend with its AUROC
    and, where `intervals` gives one, its interval (`ci_note` says which: the legend's title)."""
    if not scores:
        raise ValueError("scores is empty: nothing to plot")
    intervals = intervals or {}
    fig = Figure(figsize=(5, 5.6))
    ax = fig.add_subplot()
    for name, score in scores.items():
        auc = interval_text(roc_auc_score(y_true, score), *intervals.get(name, (None, None)))
        roc_line(ax, y_true, score, label=f"{name} (AUROC {auc})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label=CHANCE_ROC)
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal", xlabel="false positive rate",
           ylabel="true positive rate", title=title)
    _legend_below(ax, title=f"AUROC [{ci_note}]" if intervals else None)
    return fig


def pr_png(y_true: np.ndarray, prob: np.ndarray, path: str | Path, title: str,
           interval: tuple[float, float] | None = None, ci_note: str = CI_NOTE) -> None:
    save_figure(pr_figure(y_true, prob, title, interval, ci_note), path)


def pr_figure(y_true: np.ndarray, prob: np.ndarray, title: str, interval: tuple[float, float] | None = None,
              ci_note: str = CI_NOTE) -> Figure:
    """Precision against recall with the positive rate (chance level) as reference; the legend gives the
    average precision (AP) and, with `interval`, its interval (`ci_note` says which).

    `precision_recall_curve` ends with the convention point (recall 0, precision 1), which no threshold
    reaches; drawn as a step it makes a spike at recall 0, so it is left out.
    """
    precision, recall, _ = precision_recall_curve(y_true, prob)
    ap, positive_rate = average_precision_score(y_true, prob), float(np.mean(y_true))
    display = PrecisionRecallDisplay(precision=precision[:-1], recall=recall[:-1], average_precision=ap,
                                     prevalence_pos_label=positive_rate)
    fig = Figure(figsize=(5, 5.6))
    ax = fig.add_subplot()
    display.plot(ax=ax, name="model", plot_chance_level=True)
    display.line_.set_label(f"model (AP {interval_text(ap, *(interval or (None, None)))})")
    # A constant score's AP is the positive rate.
    display.chance_level_.set_label(f"chance / constant score (AP {positive_rate:.3f}, the positive rate)")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    _legend_below(ax, title=f"AP: average precision [{ci_note}]" if interval else None)
    return fig
