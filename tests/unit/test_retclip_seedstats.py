"""Seed-averaged numbers, patient-level intervals, baselines and paired differences between encoders."""

import json

import numpy as np
import pytest

from experiments.retclip import seedstats
from experiments.retclip.compare import comparison_section
from experiments.retclip.odir import CLASSES
from experiments.retclip.zeroshot import Predictions, load_predictions, predictions_json
from medrepro.suite.report import experiment_section

K = len(CLASSES)


def predictions(y_true: np.ndarray, y_pred: np.ndarray, patients: np.ndarray) -> Predictions:
    scores = np.full((len(y_true), K), 0.01)
    scores[np.arange(len(y_true)), y_pred] = 0.93
    return Predictions(y_true, scores, 0, patients)


@pytest.fixture
def eyes():
    rng = np.random.default_rng(0)
    y_true = rng.choice(K, size=120, p=[0.4, 0.2, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05])
    patients = np.repeat(np.arange(60), 2)
    return y_true, patients, rng


def noisy(y_true, rng, error):
    wrong = rng.random(len(y_true)) < error
    return np.where(wrong, (y_true + 1 + rng.integers(0, K - 1, len(y_true))) % K, y_true)


def test_mean_spread_and_baselines(eyes):
    y_true, patients, rng = eyes
    preds = [predictions(y_true, noisy(y_true, rng, e), patients) for e in (0.1, 0.2, 0.3)]
    out = seedstats.encoder_summary(preds, [0, 1, 2], majority_class=0, n_boot=200, alpha=0.05, boot_seed=0)
    accuracies = [out[f"accuracy/seed-{s}"] for s in (0, 1, 2)]
    assert out["accuracy"] == pytest.approx(np.mean(accuracies))
    assert out["accuracy_sd"] == pytest.approx(np.std(accuracies, ddof=1))
    assert out["majority_accuracy"] == pytest.approx((y_true == 0).mean()) == out["prior/N"]
    assert out["chance_accuracy"] == 1 / K
    assert out["accuracy_ci_low"] < out["accuracy"] < out["accuracy_ci_high"]
    assert out["accuracy_minus_majority"] == pytest.approx(out["accuracy"] - out["majority_accuracy"])
    assert out["accuracy_minus_majority_ci_low"] > 0
    assert {"f1/N_ci_low", "auroc/N_ci_high", "auroc_macro_ci_low"} <= set(out)


def test_paired_difference_is_tighter_than_unpaired_and_signed(eyes):
    y_true, patients, rng = eyes
    base = noisy(y_true, rng, 0.3)
    better = np.where(rng.random(len(y_true)) < 0.5, y_true, base)  # fixes about half of base's errors
    a, b = [predictions(y_true, better, patients)], [predictions(y_true, base, patients)]
    d = seedstats.paired_difference(a, b, "accuracy", 500, 0.05, 0)
    assert d.estimate == pytest.approx((better == y_true).mean() - (base == y_true).mean())
    assert 0 < d.low < d.estimate < d.high
    same = seedstats.paired_difference(b, b, "accuracy", 100, 0.05, 0)
    assert same.low == same.high == 0.0
    with pytest.raises(ValueError, match="same samples"):
        seedstats.paired_difference(a, [predictions(y_true, base, patients[::-1])], "accuracy", 10, 0.05, 0)


def test_results_table_and_comparison_from_the_written_files(eyes, tmp_path):
    y_true, patients, rng = eyes
    for variant, error in (("a", 0.1), ("b", 0.5)):
        preds = {level: [predictions(y_true, noisy(y_true, rng, error), patients) for _ in range(2)]
                 for level in ("eye", "patient")}
        out = tmp_path / variant
        out.mkdir()
        (out / "predictions.json").write_text(json.dumps(predictions_json(preds, [0, 1])))
        reloaded = load_predictions(out / "predictions.json", "eye")
        assert np.array_equal(reloaded[1].y_pred, preds["eye"][1].y_pred)
        details = seedstats.encoder_summary(preds["eye"], [0, 1], 0, 50, 0.05, 0)
        (out / "details.json").write_text(json.dumps(details))
        (out / "info.json").write_text(json.dumps({"data": "synthetic", "run": {"complete": True},
                                                   "bootstrap": {"n_boot": 100, "alpha": 0.05, "seed": 0}}))
    reference = {"title": "t", "notes": "",
                 "columns": [{"metric": "accuracy", "label": "Acc", "percent": True, "ci": True, "spread": True}]}
    table = experiment_section("retclip", ["a", "b"], tmp_path, reference)
    row = next(line for line in table.splitlines() if line.startswith("| a |"))
    assert " ± " in row and "[" in row
    section = comparison_section(tmp_path, ["a", "b"])
    line = next(line for line in section.splitlines() if line.startswith("| a − b |"))
    difference = line.split("|")[2].strip()
    assert float(difference.split()[0]) > 20, difference  # about 40 points better, in points
