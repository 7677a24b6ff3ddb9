"""Result files of an evaluation: the headline last, training curves from the run's log."""

import json

import pytest

from medrepro.results import Evaluation, training_curves, write_evaluation
from medrepro.rundir import RunDir


def test_curves_keep_the_last_value_of_a_step_logged_twice(tmp_path):
    log = tmp_path / "train_log.jsonl"
    rows = [{"step": 1, "train/loss": 3.0, "train/lr": 0.1}, {"step": 2, "train/loss": 2.0, "train/lr": 0.2},
            {"step": 2, "val/f1": 0.5}, {"step": 2, "train/loss": 2.5, "train/lr": 0.2}]  # resumed at step 1
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    curves = training_curves(log)
    assert curves["train"] == "step,loss,lr\n1,3.0,0.1\n2,2.5,0.2\n"
    assert curves["val"] == "step,f1\n2,0.5\n"


def test_write_evaluation_writes_every_file_and_refuses_an_undefined_headline(tmp_path):
    out = tmp_path / "results"
    write_evaluation(out, Evaluation({"acc": 0.5}, {"accuracy": 0.5, "n": 10.0}, {"data": "synthetic"}),
                     RunDir(tmp_path))
    assert json.loads((out / "metrics.json").read_text()) == {"acc": 0.5}
    assert json.loads((out / "details.json").read_text())["n"] == 10.0
    with pytest.raises(ValueError, match="acc"):
        write_evaluation(tmp_path / "bad", Evaluation({"acc": float("nan")}, {}, {}), RunDir(tmp_path))
    assert not (tmp_path / "bad" / "metrics.json").exists()


def test_training_health_reaches_info_json_and_the_report(tmp_path):
    from medrepro.suite.report import experiment_section

    run = tmp_path / "run"
    run.mkdir()
    warning = {"sign": "flat", "step": 30, "epoch": 2, "message": "loss flat at 3.4 for 3 epochs"}
    (run / "fit.json").write_text(json.dumps({"state": {"step": 40}, "health": [warning]}))
    results = tmp_path / "results"
    write_evaluation(results / "a", Evaluation({"acc": 0.5}, {"accuracy": 0.5}, {"data": "synthetic",
                                                                                 "run": {"complete": True}}),
                     RunDir(run))
    assert json.loads((results / "a" / "info.json").read_text())["training_health"] == [{"run": ".", **warning}]
    write_evaluation(results / "b", Evaluation({"acc": 0.6}, {"accuracy": 0.6}, {"data": "synthetic",
                                                                                 "run": {"complete": True}}),
                     RunDir(tmp_path / "no-fit-json"))
    assert json.loads((results / "b" / "info.json").read_text())["training_health"] is None
    # A variant trained once per seed: one run of the loop per part, listed in the completion mark.
    seeds = RunDir(tmp_path / "seeds")
    for seed, health in ((0, []), (1, [warning])):
        seeds.part(f"seed-{seed}").path.mkdir(parents=True)
        seeds.part(f"seed-{seed}").fit_file.write_text(json.dumps({"health": health}))
    seeds.mark_complete("v", "abc", 40, -1, [seeds.part("seed-0"), seeds.part("seed-1")])
    write_evaluation(results / "c", Evaluation({"acc": 0.7}, {"accuracy": 0.7}, {"data": "synthetic",
                                                                                 "run": {"complete": True}}),
                     seeds)
    assert json.loads((results / "c" / "info.json").read_text())["training_health"] == [{"run": "seed-1",
                                                                                         **warning}]
    reference = {"title": "t", "columns": [{"metric": "accuracy", "label": "Accuracy"}], "notes": ""}
    text = experiment_section("x", ["a", "b", "c"], results, reference)
    assert "Training health warnings" in text and "- a: loss flat at 3.4 for 3 epochs (step 30)" in text
    assert "- c seed-1: loss flat at 3.4" in text and "- b:" not in text


def test_a_column_of_several_metrics_puts_a_number_beside_its_baselines():
    from medrepro.suite.report import _cell

    metrics = {"f1": 0.61, "f1_ci_low": 0.5, "f1_ci_high": 0.7, "base/absent": 0.7, "base/present": 0.25}
    column = {"metrics": ["f1", "base/absent", "base/present", "base/missing"], "label": "F1", "ci": True}
    assert _cell(metrics, column) == "0.610 [0.500, 0.700] / 0.700 / 0.250 / n/a"


def test_published_weights_get_their_own_row_beside_the_trained_variants(tmp_path):
    """An evaluation of released weights has no run: written without curves or health, reported as a
    `published` row (beside the paper's number) after the declared variants; one that does not say
    `weights: published` is not a result."""
    from medrepro.results import PUBLISHED
    from medrepro.suite.report import experiment_section

    results = tmp_path / "results"
    write_evaluation(results / "a", Evaluation({"acc": 0.5}, {"accuracy": 0.5}, {"data": "synthetic",
                                                                                 "run": {"complete": True}}),
                     RunDir(tmp_path / "run"))
    write_evaluation(results / PUBLISHED, Evaluation({"acc": 0.8}, {"accuracy": 0.8, "accuracy_ci_low": 0.7,
                                                                   "accuracy_ci_high": 0.9},
                                                     {"data": "CT-RATE valid", "weights": PUBLISHED}), None)
    assert sorted(p.name for p in (results / PUBLISHED).iterdir()) == ["details.json", "info.json", "metrics.json"]
    reference = {"title": "t", "columns": [{"metric": "accuracy", "label": "Accuracy", "ci": True}], "notes": "",
                 "reference": {PUBLISHED: "0.79 (paper, Table 2)"}}
    rows = [line for line in experiment_section("x", ["a"], results, reference).splitlines() if line.startswith("| ")]
    assert rows[1:] == ["| a | synthetic | 0.500 |  |",
                        "| published | CT-RATE valid | 0.800 [0.700, 0.900] | 0.79 (paper, Table 2) |"]
    info = json.loads((results / PUBLISHED / "info.json").read_text())
    (results / PUBLISHED / "info.json").write_text(json.dumps({**info, "weights": "trained"}))
    assert "| published | incomplete run, not reported |" in experiment_section("x", ["a"], results, reference)

    # A column only the released model's evaluation fills appears with its row, and not without it.
    reference["columns"].append({"metric": "released_only", "label": "Released only", "published": True})
    assert "| Released only |" in experiment_section("x", ["a"], results, reference)
    assert "Released only" not in experiment_section("x", ["a"], tmp_path / "no-published", reference)
