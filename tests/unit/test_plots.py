from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medrepro.plots import (
    confusion_matrix_png,
    per_class_figure,
    per_class_png,
    pr_figure,
    pr_png,
    reliability_png,
    roc_png,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 0 and image.height > 0
    # atomic writes leave no temporary files behind
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_confusion_matrix_png(tmp_path):
    cm = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 0]])  # the empty row must not divide by zero
    path = tmp_path / "out" / "confusion.png"
    confusion_matrix_png(cm, ["normal", "dr", "amd"], path, "test confusion")
    assert_png(path)


def test_confusion_matrix_png_rejects_mismatched_names(tmp_path):
    with pytest.raises(ValueError, match="class names"):
        confusion_matrix_png(np.eye(3), ["a", "b"], tmp_path / "cm.png", "t")


def test_per_class_png(tmp_path):
    per_class = {
        name: {"precision": p, "recall": r, "f1": f}
        for name, p, r, f in [("normal", 0.9, 0.8, 0.85), ("dr", 0.5, 0.7, 0.58), ("amd", 0.0, 0.0, 0.0)]
    }
    path = tmp_path / "per_class.png"
    per_class_png(per_class, path, "per-class scores")
    assert_png(path)


def test_per_class_png_rejects_inconsistent_metrics(tmp_path):
    with pytest.raises(ValueError, match="expected"):
        per_class_png({"a": {"f1": 0.5}, "b": {"recall": 0.5}}, tmp_path / "p.png", "t")
    with pytest.raises(ValueError, match="empty"):
        per_class_png({}, tmp_path / "p.png", "t")


def _drawn(fig):
    """Render once with Agg (what savefig uses) so that text and legend extents are known."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def test_per_class_bars_carry_intervals_and_tell_zero_from_missing(tmp_path):
    per_class = {"N": {"recall": 0.8, "f1": 0.7, "f1_ci_low": 0.6, "f1_ci_high": 0.8},
                 "H": {"recall": float("nan"), "f1": 0.0, "f1_ci_low": 0.0, "f1_ci_high": 0.3},
                 "M": {"recall": 0.0, "f1": None, "f1_ci_low": float("nan"), "f1_ci_high": float("nan")}}
    fig = per_class_figure(per_class, "t", caption="N normal, H hypertension, M myopia")
    renderer = _drawn(fig)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["n/a", "0", "0", "n/a"], "recall: H n/a, M 0; f1: H 0, M n/a"
    assert ax.get_xlabel() == "class" and ax.get_ylabel() == "score"
    bars = [patch for container in ax.containers if hasattr(container, "patches") for patch in container.patches]
    assert len(bars) == 6, "the _ci_ keys are intervals, not bars"
    caps = [line for line in ax.lines if line.get_marker() == "_"]  # lower and upper caps
    assert [len(line.get_xdata()) for line in caps] == [2, 2], "on N's and H's f1 only (M has none)"
    legend = fig.legends[0].get_window_extent(renderer)
    assert not any(legend.overlaps(bar.get_window_extent(renderer)) for bar in bars)
    assert "95 % bootstrap interval" in [t.get_text() for t in fig.legends[0].get_texts()]
    assert "hypertension" in fig.get_supxlabel()
    per_class_png(per_class, tmp_path / "p.png", "t")
    assert_png(tmp_path / "p.png")


def test_pr_curve_has_no_spike_at_recall_zero_and_its_legend_covers_no_line(tmp_path):
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.1).astype(int)
    prob = np.clip(0.2 + 0.3 * y + 0.3 * rng.normal(size=300), 0, 1)
    fig = pr_figure(y, prob, "t")
    renderer = _drawn(fig)
    ax = fig.axes[0]
    curve, chance = ax.lines[0], ax.lines[1]
    assert curve.get_xdata().min() > 0, "the (recall 0, precision 1) convention point is not drawn"
    assert np.allclose(chance.get_ydata(), y.mean()), "chance level at the positive rate"
    legend = ax.get_legend().get_window_extent(renderer)
    assert not legend.overlaps(ax.get_window_extent(renderer)), "the legend lies outside the axes"
    pr_png(y, prob, tmp_path / "pr.png", "t")
    assert_png(tmp_path / "pr.png")


def test_curve_displays_write_pngs(tmp_path):
    rng = np.random.default_rng(1)
    y = (rng.random(200) < 0.3).astype(int)
    prob = np.clip(0.3 + 0.4 * y + 0.2 * rng.normal(size=200), 0, 1)
    roc_png(y, prob, tmp_path / "roc" / "roc.png", "t")
    reliability_png(y, {"raw": prob, "scaled": prob / 2}, tmp_path / "rel" / "rel.png", "t", n_bins=10)
    assert_png(tmp_path / "roc" / "roc.png")
    assert_png(tmp_path / "rel" / "rel.png")
