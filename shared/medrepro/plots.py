"""PNG figures for evaluation reports.

Curves and matrices are drawn by scikit-learn's displays (`RocCurveDisplay`, `PrecisionRecallDisplay`,
`CalibrationDisplay`, `ConfusionMatrixDisplay`) on our own axes. Figures are built with
`matplotlib.figure.Figure` rather than pyplot: nothing is registered in pyplot's global figure list
(so nothing leaks across thousands of calls), and no GUI backend is ever selected, so this works on a
headless container without touching the process-wide backend. Legends sit below the axes, where
they cover no curve, reference line or bar.
"""

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.calibration import CalibrationDisplay
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    PrecisionRecallDisplay,
    RocCurveDisplay,
    average_precision_score,
    precision_recall_curve,
)

from medrepro import atomic

DPI = 150
CI_LOW, CI_HIGH = "_ci_low", "_ci_high"


def save_figure(fig: Figure, path: str | Path) -> None:
    """Write `fig` as a PNG atomically; the format is explicit because the temporary name ends in .tmp."""
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight"))


def _legend_below(ax, ncol: int = 1) -> None:
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol, frameon=False)


def confusion_matrix_png(cm: np.ndarray, class_names: Sequence[str], path: str | Path, title: str,
                         caption: str = "") -> None:
    """Counts in each cell; colour is the row-normalised fraction so rare classes stay readable."""
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
    display.plot(ax=ax, cmap="Blues", xticks_rotation=45, colorbar=False, values_format=".2f")
    display.im_.set_clim(0.0, 1.0)
    for (i, j), text in np.ndenumerate(display.text_):
        # Counts, on the colour of the fraction, in a colour readable on it.
        text.set_text(f"{cm[i, j]:g}")
        text.set_color("white" if fraction[i, j] > 0.5 else "black")
    fig.colorbar(display.im_, ax=ax, label="fraction of true class")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if caption:
        fig.supxlabel(caption, fontsize=8)
    save_figure(fig, path)


def _is_missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def per_class_png(per_class: Mapping[str, Mapping[str, float | None]], path: str | Path, title: str,
                  caption: str = "", ylabel: str = "score", xlabel: str = "class") -> None:
    save_figure(per_class_figure(per_class, title, caption, ylabel, xlabel), path)


def per_class_figure(per_class: Mapping[str, Mapping[str, float | None]], title: str, caption: str = "",
                     ylabel: str = "score", xlabel: str = "class") -> Figure:
    """Grouped bars: one group per class, one bar per metric (e.g. precision, recall, f1).

    Every class must report the same metrics; their order is taken from the first class. A metric
    `m` may come with `m_ci_low` and `m_ci_high` (a bootstrap interval), drawn as an error bar. A
    missing value (None or nan, e.g. precision of a class never predicted) is marked "n/a" at the
    base of its slot, a zero bar "0", so the two cannot be confused. `caption` goes under the figure
    (say what class letters stand for). The legend sits above the title, clear of the bars.
    """
    if not per_class:
        raise ValueError("per_class is empty: nothing to plot")
    class_names = list(per_class)
    keys = list(per_class[class_names[0]])
    for name in class_names:
        if set(per_class[name]) != set(keys):
            raise ValueError(f"class '{name}' reports {sorted(per_class[name])}, expected {sorted(keys)}")
    metric_names = [k for k in keys if not k.endswith((CI_LOW, CI_HIGH))]

    values = [per_class[name][m] for name in class_names for m in metric_names]
    top = max([1.0, *(v for v in values if not _is_missing(v))])
    x = np.arange(len(class_names))
    width = 0.8 / len(metric_names)
    # Constrained layout keeps the legend above the axes and the caption at the bottom, clear of the bars.
    fig = Figure(figsize=(max(6.0, 0.9 * len(class_names) + 2), 5.0), layout="constrained")
    ax = fig.add_subplot()
    for m, metric in enumerate(metric_names):
        centers = x + (m - (len(metric_names) - 1) / 2) * width
        heights = np.array([np.nan if _is_missing(v) else v for v in (per_class[c][metric] for c in class_names)],
                           dtype=float)
        bars = ax.bar(centers, np.nan_to_num(heights), width, label=metric)
        if metric + CI_LOW in keys and metric + CI_HIGH in keys:
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
    ax.set_xticks(x, labels=class_names, rotation=45, ha="right")
    ax.set_ylim(0.0, 1.05 * top)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    has_ci = any(m + CI_LOW in keys for m in metric_names)
    if has_ci:
        ax.errorbar([], [], yerr=[], fmt="none", ecolor="black", capsize=2, label="95 % bootstrap interval")
    fig.legend(loc="outside upper center", ncol=len(metric_names) + has_ci, frameon=False)
    if caption:
        fig.supxlabel(caption, fontsize=8)
    return fig


def reliability_png(y_true: np.ndarray, probs: Mapping[str, np.ndarray], path: str | Path, title: str,
                    n_bins: int = 15) -> None:
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
    save_figure(fig, path)


def roc_png(y_true: np.ndarray, prob: np.ndarray, path: str | Path, title: str) -> None:
    fig = Figure(figsize=(5, 5.6))
    ax = fig.add_subplot()
    RocCurveDisplay.from_predictions(y_true, prob, ax=ax, name="model", plot_chance_level=True)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    _legend_below(ax)
    save_figure(fig, path)


def pr_png(y_true: np.ndarray, prob: np.ndarray, path: str | Path, title: str) -> None:
    save_figure(pr_figure(y_true, prob, title), path)


def pr_figure(y_true: np.ndarray, prob: np.ndarray, title: str) -> Figure:
    """Precision against recall with the positive rate (chance level) as reference.

    `precision_recall_curve` ends with the convention point (recall 0, precision 1), which no threshold
    reaches; drawn as a step it makes a spike at recall 0, so it is left out.
    """
    precision, recall, _ = precision_recall_curve(y_true, prob)
    display = PrecisionRecallDisplay(precision=precision[:-1], recall=recall[:-1],
                                     average_precision=average_precision_score(y_true, prob),
                                     prevalence_pos_label=float(np.mean(y_true)))
    fig = Figure(figsize=(5, 5.6))
    ax = fig.add_subplot()
    display.plot(ax=ax, name="model", plot_chance_level=True)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    _legend_below(ax)
    return fig
