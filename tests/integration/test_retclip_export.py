"""The exported model leaves the repository: loaded in a fresh process from another working directory,
with nothing but the export and the package, it scores the test eyes exactly as the run's evaluation."""

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from tests.integration.conftest import REPO, TRAIN_OVERRIDES, medrepro

pytestmark = pytest.mark.integration

SCORE = """
import json, sys
from pathlib import Path
from experiments.retclip import zeroshot
from experiments.retclip.export import load_exported

exported = load_exported(sys.argv[1])
pred = zeroshot.predict(exported.model, exported.tokenizer, exported.transform, exported.prompts, Path(sys.argv[2]), 64)
print(json.dumps({"y_true": pred.y_true.tolist(), "y_score": pred.y_score.tolist(), "config": exported.config}))
"""


def test_export_loads_elsewhere_with_the_runs_scores(retclip_workdir, reference_run, tmp_path):
    export = tmp_path / "exported" / "retclip-pubmedbert"
    medrepro(["retclip", "export", "--variant", "pubmedbert", "--run", str(reference_run), "--out", str(export),
              *TRAIN_OVERRIDES], retclip_workdir)
    results = retclip_workdir / "results" / "export-check"
    medrepro(["retclip", "evaluate", "--variant", "pubmedbert", "--run", str(reference_run), "--out", str(results),
              *TRAIN_OVERRIDES, "eval.bootstrap=10"], retclip_workdir)
    expected = json.loads((results / "predictions.json").read_text())["eye"]

    assert {p.name for p in export.iterdir()} == {"model.safetensors", "config.json", "text_encoder", "prompts.yaml",
                                                   "README.md"}
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o044 == 0o044 for p in export.rglob("*")), "readable by others"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Only the package on the path: no run directory, no data/ beside the working directory, no hub.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "shared"), str(REPO)]), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", SCORE, str(export), str(retclip_workdir / "data/retclip/lmdb/test")],
                          cwd=elsewhere, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "initialized partially" not in proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["y_true"] == expected["y_true"]
    assert np.allclose(got["y_score"], expected["y_score"]["0"], atol=1e-6, rtol=0)
    assert got["config"]["variant"] == "pubmedbert" and not any(str(retclip_workdir) in str(v)
                                                                  for k, v in got["config"].items() if k != "encoder")
