"""The run directory object: its layout as the shared loop leaves it, the lock, the completion mark,
and loading a checkpoint only into the variant and architecture it was trained for."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from medrepro.config_sections import TrackingConfig, TrainConfig
from medrepro.errors import CheckpointError, RunError
from medrepro.rundir import RunDir
from medrepro.trainer import fit
from tests.unit.test_run_guard import Tiny, data


def train(run: RunDir) -> None:
    """8 steps, checkpoints every 2, an evaluation (hence a best checkpoint) every epoch of 4."""
    cfg = TrainConfig(epochs=2.0, batch_size=8, lr=0.01, save_every_steps=2, keep_last=2, log_every_steps=4,
                      best_metric="val/loss", best_mode="min", tracking=TrackingConfig(tensorboard=False))
    torch.manual_seed(0)
    fit(Tiny(), data(), cfg, run, loss_fn=lambda m, b: m(*b), seed=0, run_config=cfg, variant="tiny",
        evaluate=lambda m: {"val/loss": float(m(*data().tensors)[0])})


def test_the_shared_loop_leaves_the_documented_layout(tmp_path):
    run = RunDir(tmp_path / "run")
    train(run)
    for path in (run.config_file, run.manifest_file, run.best, run.final, run.fit_file, run.train_log,
                 run.complete_file):
        assert path.is_file(), path
    assert [p.name for p in run.step_checkpoints()] == ["step-00000006.pt", "step-00000008.pt"]
    assert json.loads(run.manifest_file.read_text())["variant"] == "tiny"
    assert run.config_file.read_text().startswith("# variant: tiny\n")


def test_completion_mark_and_variant(tmp_path):
    run = RunDir(tmp_path / "run")
    assert not run.is_complete()
    with pytest.raises(RunError, match="holds no finished run"):
        run.completion("tiny", "finish it")
    train(run)
    mark = run.completion("tiny", "finish it")
    assert {k: mark[k] for k in ("variant", "step", "parts")} == {"variant": "tiny", "step": 8, "parts": []}
    with pytest.raises(RunError, match="variant 'tiny', not 'other'"):
        run.completion("other", "finish it")


def test_a_run_of_parts_lists_them_in_its_mark(tmp_path):
    run = RunDir(tmp_path / "run")
    parts = [run.part("seed-0"), run.part("seed-1")]
    run.mark_complete("tiny", "abc", 8, -1, parts)
    assert json.loads(run.complete_file.read_text())["parts"] == ["seed-0", "seed-1"]
    assert run.parts() == parts


def test_begin_clears_the_completion_mark(tmp_path):
    """A run started again is complete only when it ends: a crash must not leave the old mark."""
    run = RunDir(tmp_path / "run")
    run.mark_complete("tiny", "abc", 8, 8)
    run.begin(TrainConfig(), variant="tiny", checksums={})
    assert not run.is_complete()
    assert json.loads(run.manifest_file.read_text())["variant"] == "tiny"


def test_load_checks_digest_variant_and_architecture(tmp_path):
    run = RunDir(tmp_path / "run")
    train(run)
    model = Tiny()
    saved = run.load_into(model, "best", "tiny")
    assert torch.equal(model.linear.weight, saved["model"]["linear.weight"])
    assert run.checkpoint_path("final") == run.final
    assert run.checkpoint_path(str(tmp_path / "x.pt")) == tmp_path / "x.pt"
    with pytest.raises(CheckpointError, match="variant 'tiny', not 'other'"):
        run.load("best", "other")
    with pytest.raises(CheckpointError, match=r"does not hold weights of this model") as info:
        run.load_into(nn.Linear(3, 1), "final", "tiny")
    assert "\n" not in str(info.value)
    with open(run.best, "r+b") as f:  # one flipped byte
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(CheckpointError, match="does not match its SHA-256"):
        run.load("best", "tiny")


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path):
    run = RunDir(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from medrepro.rundir import RunDir
        with RunDir({str(run.path)!r}).locked():
            print("held", flush=True)
            sys.stdin.read()  # holds the lock until the test closes its stdin or kills it
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match=r"is in use by pid \d+"), run.locked():
            pass
    finally:
        holder.kill()
        holder.wait()
    with run.locked():  # released by the holder's death
        pass
