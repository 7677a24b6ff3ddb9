from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from medrepro import bootstrap
from medrepro.plots import (
    CHANCE_ROC,
    CI_NOTE,
    confusion_matrix_figure,
    confusion_matrix_png,
    interval_note,
    interval_text,
    per_class_figure,
    per_class_png,
    pr_figure,
    pr_png,
    reliability_png,
    roc_figure,
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
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["recall (no interval)", "f1", CI_NOTE]
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


def legend_texts(legend) -> list[str]:
    return [t.get_text() for t in legend.get_texts()]


def scored(n: int = 200, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    return y, np.clip(0.3 + 0.4 * y + 0.2 * rng.normal(size=n), 0, 1)


def test_interval_text_shows_the_interval_only_where_there_is_one():
    assert interval_text(0.75812, 0.6512, 0.8539) == "0.758 [0.651, 0.854]"
    assert interval_text(0.75812, None, None) == interval_text(0.75812, float("nan"), 0.9) == "0.758"
    assert interval_text(61.94, 58.1, 66.4, digits=1) == "61.9 [58.1, 66.4]"
    assert interval_note("patients") == "95 % bootstrap interval, patients resampled"


def test_roc_figure_names_every_curve_with_its_auroc_and_interval():
    y, p = scored()
    fig = roc_figure(y, {"a": p, "b": 1 - p}, "t", {"a": (0.7, 0.8)}, ci_note="95 % interval, patients resampled")
    ax = fig.axes[0]
    auc_a, auc_b = roc_auc_score(y, p), roc_auc_score(y, 1 - p)
    assert legend_texts(ax.get_legend()) == [f"a (AUROC {auc_a:.3f} [0.700, 0.800])", f"b (AUROC {auc_b:.3f})",
                                             CHANCE_ROC]
    assert ax.get_legend().get_title().get_text() == "AUROC [95 % interval, patients resampled]"
    assert ax.get_xlabel() == "false positive rate" and ax.get_ylabel() == "true positive rate"
    no_intervals = roc_figure(y, {"a": p}, "t").axes[0].get_legend()
    assert no_intervals.get_title().get_text() == "", "no interval, no note about one"


def test_pr_figure_gives_the_average_precision_with_its_interval():
    y, p = scored()
    legend = pr_figure(y, p, "t", (0.5, 0.7), "95 % interval").axes[0].get_legend()
    ap = average_precision_score(y, p)
    assert legend_texts(legend) == [f"model (AP {ap:.3f} [0.500, 0.700])",
                                    f"chance / constant score (AP {y.mean():.3f}, the positive rate)"]
    assert legend.get_title().get_text() == "AP: average precision [95 % interval]"


def test_confusion_matrix_names_both_axes_with_the_full_class_names():
    names = ["normal (N)", "age-related macular degeneration (A)", "pathological myopia (M)"]
    fig = confusion_matrix_figure(np.array([[5, 1, 0], [2, 7, 1], [0, 3, 4]]), names, "t")
    renderer = _drawn(fig)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == names == [t.get_text() for t in ax.get_yticklabels()]
    assert [t.get_text() for t in ax.texts] == ["5", "1", "0", "2", "7", "1", "0", "3", "4"], "counts in the cells"
    colorbar = ax.child_axes[0].get_window_extent(renderer)
    assert not colorbar.overlaps(ax.title.get_window_extent(renderer)), "the title clears the colour bar"
    assert colorbar.height == pytest.approx(ax.get_window_extent(renderer).height), "as tall as the matrix"


def error_bars(ax) -> list[tuple[np.ndarray, np.ndarray]]:
    """(lower, upper) cap heights of each errorbar call on `ax`, in the order they were drawn."""
    caps = [line.get_ydata() for line in ax.lines if line.get_marker() == "_"]
    return list(zip(caps[::2], caps[1::2], strict=True))


def test_retclip_figures_name_the_classes_in_full_and_draw_every_interval_the_results_have():
    from experiments.retclip import seedstats
    from experiments.retclip.evaluate import figures
    from experiments.retclip.odir import CLASS_NAMES, CLASSES
    from experiments.retclip.zeroshot import Predictions

    rng = np.random.default_rng(0)
    y_true = np.arange(160) % len(CLASSES)  # every class present
    patients = np.repeat(np.arange(80), 2)
    preds = []
    for _ in range(2):
        scores = rng.random((len(y_true), len(CLASSES)))
        scores[np.arange(len(y_true)), y_true] += rng.random(len(y_true))  # better than chance, not perfect
        preds.append(Predictions(y_true, scores / scores.sum(axis=1, keepdims=True), 0, patients))
    result = seedstats.encoder_summary(preds, [0, 1], 0, 30, 0.05, 0)
    figs = figures(preds, result, "v")

    confusion = figs["confusion_matrix.png"].axes[0]
    full = [f"{CLASS_NAMES[c]} ({c})" for c in CLASSES]
    assert [t.get_text() for t in confusion.get_yticklabels()] == full
    assert [t.get_text() for t in confusion.get_xticklabels()] == full

    bars = figs["per_class.png"]
    ax = bars.axes[0]
    assert [t.get_text().replace("\n", " ") for t in ax.get_xticklabels()] == full
    assert legend_texts(bars.legends[0]) == ["precision (no interval)", "recall (no interval)", "F1",
                                             "AUROC (one vs rest)", CI_NOTE]
    (f1_low, f1_high), (auc_low, auc_high) = error_bars(ax)
    assert np.allclose(f1_low, [result[f"f1/{c}_ci_low"] for c in CLASSES])
    assert np.allclose(f1_high, [result[f"f1/{c}_ci_high"] for c in CLASSES])
    assert np.allclose(auc_low, [result[f"auroc/{c}_ci_low"] for c in CLASSES])
    assert np.allclose(auc_high, [result[f"auroc/{c}_ci_high"] for c in CLASSES])


def ct_clip_predictions():
    from experiments.ct_clip.ctrate import LABELS
    from experiments.ct_clip.zeroshot import Predictions

    rng = np.random.default_rng(0)
    n = 60
    y = (rng.random((n, len(LABELS))) < 0.3).astype(int)
    y[:, 3] = 0  # an abnormality no volume shows: not evaluated
    score = np.clip(0.3 + 0.3 * y + 0.25 * rng.normal(size=y.shape), 0, 1)
    volumes = [f"valid_{i // 2 + 1}_a_{i % 2 + 1}" for i in range(n)]  # two scans per patient
    return Predictions(volumes, y, score, 1)


def test_ct_clip_roc_panels_give_each_auroc_and_explain_every_marker():
    from experiments.ct_clip import zeroshot
    from experiments.ct_clip.ctrate import LABELS
    from experiments.ct_clip.evaluate import OPERATING_POINT, roc_grid_figure

    pred = ct_clip_predictions()
    result = zeroshot.summarize(pred, n_boot=30)
    fig = roc_grid_figure(pred, result, "t")
    for k, (ax, label) in enumerate(zip(fig.axes, LABELS, strict=True)):
        if k == 3:
            assert ax.get_title() == f"{label}\nnot evaluated: one class only"
            continue
        auc = interval_text(result[f"auroc/{label}"], result[f"auroc/{label}_ci_low"], result[f"auroc/{label}_ci_high"])
        assert ax.get_title() == f"{label}\nAUROC {auc}"
        assert "[" in auc, "the interval is there"
        dot = next(line for line in ax.lines if line.get_marker() == "o")
        decided = pred.y_score[:, k] > result[f"threshold/{label}"]
        y = pred.y_true[:, k] == 1
        assert (dot.get_xdata()[0], dot.get_ydata()[0]) == (decided[~y].mean(), decided[y].mean())
    legend = fig.legends[0]
    assert sorted(legend_texts(legend)) == sorted([CHANCE_ROC, "ROC curve", OPERATING_POINT])
    assert "95 % bootstrap interval" in legend.get_title().get_text()
    assert fig.axes[-1].get_xlabel() == "false positive rate" and fig.axes[0].get_ylabel() == "true positive rate"


def test_ct_clip_auroc_figure_explains_its_band_bars_and_line():
    from experiments.ct_clip import zeroshot
    from experiments.ct_clip.evaluate import auroc_figure

    result = zeroshot.summarize(ct_clip_predictions(), n_boot=30)
    texts = legend_texts(auroc_figure(result, "t").axes[0].get_legend())
    mean = interval_text(result["auroc_macro"], result["auroc_macro_ci_low"], result["auroc_macro_ci_high"])
    assert any(mean in text and "band" in text for text in texts), texts
    assert CHANCE_ROC in texts and any("bootstrap interval" in text for text in texts)


def test_exmed_bert_roc_comparison_gives_every_curve_the_interval_of_its_own_evaluation():
    from experiments.exmed_bert.evaluate import metric_rows, roc_compared_figure

    y, p = scored(120, seed=3)
    rng = np.random.default_rng(4)
    scores = {"xgboost": p, "random_init": np.clip(p + 0.3 * rng.normal(size=len(p)), 0, 1)}
    boot = dict(n_boot=50, alpha=0.05, seed=7)
    fig = roc_compared_figure(y, scores, "t", **boot)
    texts = legend_texts(fig.axes[0].get_legend())
    assert texts[-1] == CHANCE_ROC
    # The experiment's variant order, whatever the order given: a variant keeps its colour.
    assert [t.split()[0] for t in texts[:-1]] == ["random_init", "xgboost"]
    for text, name in zip(texts, ["random_init", "xgboost"], strict=False):
        # As evaluate computes details.json's roc_auc interval: the same patients resampled, the same seed.
        own = bootstrap.bootstrap(metric_rows(y, scores[name], 0.5, 0.2)["roc_auc"], len(y), **boot)
        assert text == f"{name} (AUROC {interval_text(own.estimate, own.low, own.high)})"
    again = roc_compared_figure(y, dict(reversed(scores.items())), "t", **boot)
    assert [line.get_color() for line in again.axes[0].lines] == [line.get_color() for line in fig.axes[0].lines]


def test_biomedica_clip_figure_explains_its_abbreviations_and_every_line():
    from experiments.biomedica_clip.evaluate import KS, recall_figure

    names = ["zeroshot_acc", *(f"{d}_r{k}" for d in ("i2t", "t2i") for k in KS)]
    result = {f"{phase}/{n}{suffix}": value for phase, base in (("before", 0.1), ("after", 0.5)) for n in names
              for suffix, value in (("", base), ("_ci_low", base - 0.05), ("_ci_high", base + 0.05))}
    result.update({"chance/zeroshot_acc": 0.25, **{f"chance/r{k}": 0.01 * k for k in KS},
                   "majority/zeroshot_acc": 0.0})
    fig = recall_figure(result)
    ax = fig.axes[0]
    texts = legend_texts(fig.legends[0])
    assert texts[:2] == ["before fine-tuning", "after fine-tuning"]
    assert any("majority class" in t and "(0.00)" in t for t in texts), "its value: at 0 the line is on the axis"
    assert any("bootstrap interval" in t for t in texts) and any(t.startswith("chance") for t in texts)
    assert "image→text\nR@1" in [t.get_text() for t in ax.get_xticklabels()]
    assert "R@k:" in fig.get_supxlabel()
    assert len(error_bars(ax)) == 2, "before and after, every bar"
