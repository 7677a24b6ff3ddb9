"""exmed_bert guided mode, driven through a pseudo-terminal as a user would, and refused without one."""

import os
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest
import yaml

from experiments.exmed_bert.config import ExMedBertConfig
from medrepro import config

REPO = Path(__file__).resolve().parents[2]
DOWN, ENTER, BACKSPACE = "\x1b[B", "\r", "\x7f"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "shared"), str(REPO)]), "TERM": "xterm",
            "OMP_NUM_THREADS": "1"}


def test_guided_mode_through_a_terminal_writes_the_config_it_would_run(tmp_path):
    written, out = tmp_path / "guided.yaml", tmp_path / "run"
    child = pexpect.spawn(sys.executable, ["-m", "medrepro", "exmed_bert", "guided", "--write-config", str(written),
                                           "--out", str(out), "--dry-run"],
                          cwd=str(tmp_path), env=_env(), encoding="utf-8", timeout=120, dimensions=(40, 160))
    answers = [
        ("generate synthetic patients", ENTER),  # synthetic (the default)
        ("Number of synthetic patients", BACKSPACE * 6 + "240" + ENTER),
        ("novel codes", ENTER),
        ("Seed", ENTER),
        ("Maximum sequence length", BACKSPACE * 6 + "48" + ENTER),
        ("keep", ENTER),
        ("use the synthetic ClinVec files", ENTER),
        ("nearest ancestor", ENTER),
        ("Resize", DOWN + DOWN + ENTER),  # auto → truncate → pca
        ("Model size", DOWN + ENTER),  # tiny → small
        ("Weight initialisation", DOWN + ENTER),  # xavier → orthogonal
        ("Output directory", ENTER),
    ]
    for prompt, keys in answers:
        child.expect(prompt)
        child.send(keys)
    child.expect("The resolved configuration")
    child.expect("and run the pipeline")
    child.send("y")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert "repeat this run with `medrepro exmed_bert smoke --config" in child.before
    cfg = config.load_config(ExMedBertConfig, written)
    assert (cfg.data.synthetic_patients, cfg.data.max_length, cfg.clinvec.resize, cfg.model.preset,
            cfg.model.init) == (240, 48, "pca", "small", "orthogonal")
    # Everything not asked keeps the profile's value.
    smoke = yaml.safe_load((REPO / "experiments/exmed_bert/configs/smoke.yaml").read_text())
    assert cfg.train.epochs == smoke["train"]["epochs"] and cfg.runtime.threads == 1
    assert not out.exists()  # a dry run stops before the pipeline


def test_guided_mode_refuses_without_a_terminal(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "medrepro", "exmed_bert", "guided"], cwd=tmp_path, env=_env(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "needs a terminal" in proc.stderr and "config mode" in proc.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("bad", ["abc", "5"])
def test_number_prompts_reject_bad_answers(bad):
    from experiments.exmed_bert.guided import _number

    assert _number(int, 30)(bad) is not True
    assert _number(int, 30)("30") is True
