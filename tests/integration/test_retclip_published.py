"""`medrepro retclip evaluate --weights`: upstream's small RET-CLIP (tests/fixtures/retclip, made by upstream's code)
as a release file, evaluated on the smoke data into a `published` row of the report; the same file with one
tensor renamed is one line, exit 2, and no results."""

import json
from pathlib import Path

import pytest
import torch

from tests.integration.conftest import medrepro
from tests.unit.test_retclip_published import ARCHITECTURE, upstream, write_text_tower

pytestmark = pytest.mark.integration


def test_released_weights_evaluate_into_a_published_row_and_a_renamed_tensor_is_refused(retclip_workdir, tmp_path):
    saved = upstream()
    weights = tmp_path / "RET-CLIP.pt"
    torch.save(saved["state_dict"], weights)
    encoder = write_text_tower(saved, tmp_path / "chinese-roberta")
    overrides = [*ARCHITECTURE, f"encoders.chinese_roberta.path={encoder}", "eval.bootstrap=50"]
    results = tmp_path / "results"
    out = results / "retclip" / "published"
    medrepro(["retclip", "evaluate", "--weights", str(weights), "--out", str(out), *overrides], retclip_workdir)
    info = json.loads((out / "info.json").read_text())
    assert info["weights"] == "published" and info["checkpoint"] == str(weights)
    assert Path(info["prompts"]["file"]).name == "prompts_zh.yaml"
    details = json.loads((out / "details.json").read_text())
    assert 0 <= details["accuracy_ci_low"] <= details["accuracy"] <= details["accuracy_ci_high"] <= 1
    assert "accuracy_sd" not in details and "n_seeds" not in details
    for head in ("patient", "left", "right"):
        assert details[f"logit_scale/{head}"] == pytest.approx(float(saved["logit_scales"][head]), rel=1e-6)
    predictions = json.loads((out / "predictions.json").read_text())
    assert predictions["seeds"] == ["published"] and list(predictions["eye"]["y_score"]) == ["published"]
    medrepro(["report", "--results", str(results)], retclip_workdir)
    rows = [line for line in (results / "RESULTS.md").read_text().splitlines() if line.startswith("| published |")]
    assert len(rows) == 1 and "[" in rows[0], rows

    state = dict(saved["state_dict"])
    state["module.text_projection_left.4.weight"] = state.pop("module.text_projection_left.2.weight")
    torch.save(state, weights)
    refused = medrepro(["retclip", "evaluate", "--weights", str(weights), "--out", str(tmp_path / "refused"),
                        *overrides], retclip_workdir, check=False)
    assert refused.returncode == 2 and "'module.text_projection_left.4.weight'" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert not (tmp_path / "refused").exists()
