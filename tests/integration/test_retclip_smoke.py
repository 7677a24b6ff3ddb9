"""The smoke run end to end (the `host_smoke` fixture, as the image's default command runs it) must learn."""

import json

import pytest
from PIL import Image

pytestmark = pytest.mark.integration


def test_smoke_learns_far_above_chance(host_smoke):
    results = host_smoke / "results" / "retclip" / "pubmedbert"
    m = json.loads((results / "metrics.json").read_text())

    # 8 classes: chance accuracy 12.5 %, balanced accuracy 12.5 %, AUC 0.5.
    assert m["accuracy"] >= 0.40, m
    assert m["balanced_accuracy"] >= 0.35, m
    assert m["auc_macro"] >= 0.85, m
    assert m["accuracy_ci_low"] <= m["accuracy"] <= m["accuracy_ci_high"]
    assert m["accuracy_ci_low"] > 0.125, "the whole interval must clear chance"
    assert m["n_eyes"] > 50
    for scale in ("patient", "left", "right"):
        assert 1.0 < m[f"logit_scale/{scale}"] <= 1000.0 + 1e-3
    for png in ("confusion_matrix.png", "per_class.png"):
        with Image.open(results / "plots" / png) as image:
            assert image.format == "PNG" and image.width > 100
    run = host_smoke / "runs" / "retclip" / "pubmedbert"
    assert (run / "config.yaml").is_file() and (run / "manifest.json").is_file()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["packages"]["torch"] and len(manifest["data"]) == 2
    report = (host_smoke / "results" / "RESULTS.md").read_text()
    assert "| pubmedbert | synthetic |" in report and "seed: 12.19 %" in report
