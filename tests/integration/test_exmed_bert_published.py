"""`medrepro exmed_bert evaluate --weights`: the released pretraining model (here the fixture made by
upstream's code, tests/fixtures/exmed_bert/release, whose vocabulary holds the smoke patients' codes)
scored on masked-code prediction and PLOS on the smoke profile's synthetic test patients, into
results/exmed_bert/published and a `published` row of `medrepro report`; a cut weights file is one line."""

import json
import shutil
from pathlib import Path

import pytest

from tests.integration.conftest import medrepro

pytestmark = pytest.mark.integration
RELEASE = Path(__file__).resolve().parents[1] / "fixtures" / "exmed_bert" / "release"
# The patients the fixture's vocabulary was made from.
SMALL = ["data.synthetic_patients=120"]


def test_released_weights_evaluate_into_a_published_row(tmp_path):
    # The released model reads the prepared patients only: no ClinVec stage, no pretraining.
    medrepro(["exmed_bert", "prepare", *SMALL], tmp_path)
    results = tmp_path / "results"
    out = results / "exmed_bert" / "published"
    medrepro(["exmed_bert", "evaluate", "--weights", str(RELEASE), "--out", str(out), *SMALL], tmp_path)
    info = json.loads((out / "info.json").read_text())
    assert info["weights"] == "published" and sorted(info["source"]["sha256"]) == sorted(
        p.name for p in RELEASE.iterdir())
    counts = info["vocabulary"]["counts"]
    # Every ICD-10-CM and ATC code of the smoke patients is in the fixture's vocabulary; procedures are not
    # upstream inputs.
    assert info["vocabulary"]["coverage"]["icd10cm"] == info["vocabulary"]["coverage"]["atc"] == 1.0
    assert counts["cpt/dropped"] == counts["cpt/codes"] > 0
    m = json.loads((out / "details.json").read_text())
    assert m["masked_codes"] > 0 and m["test_patients"] > 0
    assert 0 <= m["mlm_accuracy"] <= m["mlm_top10"] <= 1 and m["plos_roc_auc_ci_low"] <= m["plos_roc_auc"]
    assert "most_frequent/mlm_accuracy" in m and m["chance/plos_roc_auc"] == 0.5
    medrepro(["report", "--results", str(results)], tmp_path)
    row = next(line for line in (results / "RESULTS.md").read_text().splitlines() if line.startswith("| published"))
    assert f"{m['mlm_accuracy']:.3f}" in row and f"{m['plos_roc_auc']:.3f}" in row

    cut = tmp_path / "cut"
    shutil.copytree(RELEASE, cut)
    weights = cut / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[:-1000])  # a download cut short: no zip directory
    refused = medrepro(["exmed_bert", "evaluate", "--weights", str(cut), "--out", str(tmp_path / "refused"), *SMALL],
                       tmp_path, check=False)
    assert refused.returncode == 2 and "pytorch_model.bin" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert not (tmp_path / "refused").exists()
