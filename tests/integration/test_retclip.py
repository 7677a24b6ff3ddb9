"""The retclip smoke pipeline end to end (the `reproduced` run): every encoder learns, the outputs are
complete, and the run records what produced it."""

import json

import pytest
from PIL import Image

pytestmark = pytest.mark.integration
VARIANTS = ("pubmedbert", "bert_base", "biobert")

@pytest.mark.parametrize("variant", VARIANTS)
def test_smoke_learns_far_above_the_majority_baseline(reproduced, variant):
    results = reproduced.workdir / "results" / "retclip" / variant
    m = json.loads((results / "details.json").read_text())
    assert m["n_seeds"] == 3 and all(f"accuracy/seed-{s}" in m for s in (0, 1, 2)) and m["accuracy_sd"] > 0
    # Always predicting the training majority class ("N") scores its share of the test eyes, far above 1/8.
    assert m["majority_accuracy"] == m["prior/N"] > 0.3 > m["chance_accuracy"]
    assert m["accuracy_ci_low"] <= m["accuracy"] <= m["accuracy_ci_high"]
    assert m["accuracy_minus_majority_ci_low"] > 0, "the whole interval must clear the majority baseline"
    assert m["balanced_accuracy"] > 0.25 and m["auroc_macro"] > 0.85, m
    # Patients: 40 test patients, so only the point estimate is required to clear the baseline.
    assert m["patient/accuracy"] > m["patient/majority_accuracy"] and m["patient/auroc_macro"] > 0.85
    assert m["n"] > 50 and 20 < m["patient/n"] < m["n"]
    for scale in ("patient", "left", "right"):
        assert 1.0 < m[f"logit_scale/{scale}"] <= 1000.0 + 1e-3
    headline = json.loads((results / "metrics.json").read_text())
    assert headline == {"acc": m["accuracy"], "bal_acc": m["balanced_accuracy"], "f1": m["f1_macro"],
                        "auc": m["auroc_macro"]}
    for png in ("confusion_matrix.png", "per_class.png"):
        with Image.open(results / "plots" / png) as image:
            assert image.format == "PNG" and image.width > 100
    assert (results / "curves" / "train.csv").read_text().startswith("step,")


def test_results_table_shows_seed_spread_and_paired_differences(reproduced):
    report = (reproduced.workdir / "results" / "RESULTS.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| pubmedbert | synthetic |")]
    assert len(rows) == 1 and " ± " in rows[0] and "[" in rows[0]
    assert "Paired differences between encoders" in report
    for pair in ("pubmedbert − bert_base", "pubmedbert − biobert", "bert_base − biobert"):
        assert f"| {pair} |" in report


def test_runs_record_config_manifest_and_runtime(reproduced):
    run = reproduced.workdir / "runs" / "retclip" / "pubmedbert"
    assert (run / "config.yaml").is_file() and (run / "seed-2" / "config.yaml").is_file()
    manifest = json.loads((run / "seed-0" / "manifest.json").read_text())
    assert manifest["packages"]["torch"] and manifest["packages"]["scipy"] and len(manifest["data"]) == 2
    assert manifest["runtime"]["torch_threads"] == 1 and manifest["runtime"]["cpu_capability"] == "AVX2"
    report = (reproduced.workdir / "results" / "RESULTS.md").read_text()
    assert "| pubmedbert | synthetic |" in report and "seed: 12.19 %" in report
