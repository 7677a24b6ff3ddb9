"""PNG figures for evaluation reports.

Figures are built with `matplotlib.figure.Figure` rather than pyplot: nothing is registered in
pyplot's global figure list (so nothing leaks across thousands of calls), and no GUI backend is ever
selected, so this works on a headless container without touching the process-wide backend.
"""

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from medrepro import atomic

DPI = 150


def save_figure(fig: Figure, path: str | Path) -> None:
    """Write `fig` as a PNG atomically; the format is explicit because the temporary name ends in .tmp."""
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight"))


def confusion_matrix_png(cm: np.ndarray, class_names: Sequence[str], path: str | Path, title: str) -> None:
    """Counts in each cell; colour is the row-normalised fraction so rare classes stay readable."""
    cm = np.asarray(cm)
    n_classes = len(class_names)
    if cm.shape != (n_classes, n_classes):
        raise ValueError(f"confusion matrix shape {cm.shape} does not match {n_classes} class names")
    row_sums = cm.sum(axis=1, keepdims=True)
    fraction = np.divide(cm, row_sums, out=np.zeros(cm.shape), where=row_sums > 0)

    side = max(4.0, 0.6 * n_classes + 2)
    fig = Figure(figsize=(side + 1, side))
    ax = fig.add_subplot()
    image = ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="fraction of true class")
    for i in range(n_classes):
        for j in range(n_classes):
            color = "white" if fraction[i, j] > 0.5 else "black"
            ax.text(j, i, f"{cm[i, j]:g}", ha="center", va="center", color=color)
    ticks = np.arange(n_classes)
    ax.set_xticks(ticks, labels=class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    save_figure(fig, path)


def per_class_png(per_class: Mapping[str, Mapping[str, float]], path: str | Path, title: str) -> None:
    """Grouped bars: one group per class, one bar per metric (e.g. precision, recall, f1).

    Every class must report the same metrics; their order is taken from the first class.
    """
    if not per_class:
        raise ValueError("per_class is empty: nothing to plot")
    class_names = list(per_class)
    metric_names = list(per_class[class_names[0]])
    for name in class_names:
        if set(per_class[name]) != set(metric_names):
            raise ValueError(
                f"class '{name}' reports {sorted(per_class[name])}, expected {sorted(metric_names)}"
            )

    x = np.arange(len(class_names))
    width = 0.8 / len(metric_names)
    fig = Figure(figsize=(max(6.0, 0.9 * len(class_names) + 2), 4.5))
    ax = fig.add_subplot()
    for m, metric in enumerate(metric_names):
        heights = [per_class[name][metric] for name in class_names]
        ax.bar(x + (m - (len(metric_names) - 1) / 2) * width, heights, width, label=metric)
    ax.set_xticks(x, labels=class_names, rotation=45, ha="right")
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.legend()
    save_figure(fig, path)


def reliability_png(y_true: np.ndarray, probs: Mapping[str, np.ndarray], path: str | Path, title: str,
                    n_bins: int = 15) -> None:
    """Reliability diagram: fraction of positives against mean predicted probability per equal-width
    bin, one line per entry of `probs` (e.g. before and after calibration), with the diagonal for
    reference and a histogram of the first entry's probabilities underneath."""
    if not probs:
        raise ValueError("probs is empty: nothing to plot")
    fig = Figure(figsize=(5.5, 6.5))
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    top.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfectly calibrated")
    for label, prob in probs.items():
        fraction, mean_prob = calibration_curve(y_true, prob, n_bins=n_bins, strategy="uniform")
        top.plot(mean_prob, fraction, marker="o", label=label)
    top.set_ylabel("fraction of positives")
    top.set_ylim(-0.02, 1.02)
    top.set_title(title)
    top.legend(loc="upper left")
    first = next(iter(probs.values()))
    bottom.hist(first, bins=n_bins, range=(0, 1), color="tab:blue", alpha=0.7)
    bottom.set_yscale("log")
    bottom.set_xlabel("predicted probability of the positive class")
    bottom.set_ylabel("pairs")
    save_figure(fig, path)


def roc_png(y_true: np.ndarray, prob: np.ndarray, path: str | Path, title: str) -> None:
    fpr, tpr, _ = roc_curve(y_true, prob)
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, label=f"ROC-AUC {roc_auc_score(y_true, prob):.3f}")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right")
    save_figure(fig, path)


def pr_png(y_true: np.ndarray, prob: np.ndarray, path: str | Path, title: str) -> None:
    precision, recall, _ = precision_recall_curve(y_true, prob)
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    ax.step(recall, precision, where="post", label=f"average precision {average_precision_score(y_true, prob):.3f}")
    ax.axhline(float(np.mean(y_true)), linestyle=":", color="grey", label="positive rate")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(loc="lower left")
    save_figure(fig, path)
