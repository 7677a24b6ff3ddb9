"""Runs that cannot be corrupted: one writer per run directory, checkpoints that belong to the config,
and a log that a restart does not double (the completion mark: test_rundir.py)."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from medrepro import run_guard
from medrepro.config_sections import TrackingConfig, TrainConfig
from medrepro.errors import CheckpointError, ConfigError, RunError
from medrepro.trainer import fit


def test_a_second_writer_gets_one_line_naming_the_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from medrepro import run_guard
        with run_guard.exclusive({str(tmp_path)!r}):
            print("held", flush=True)
            sys.stdin.read()  # holds the lock until the test kills it
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match=rf"in use by pid {holder.pid}") as info, run_guard.exclusive(tmp_path):
            pass
        assert "\n" not in str(info.value)
    finally:
        holder.kill()
        holder.wait()
    # The holder was killed: its lock went with it, and the directory is free again.
    with run_guard.exclusive(tmp_path):
        pass


def test_a_file_where_the_run_directory_should_be(tmp_path):
    (tmp_path / "run").write_text("not a directory")
    with pytest.raises(ConfigError, match="is a file, not a run directory"), run_guard.exclusive(tmp_path / "run"):
        pass


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return nn.functional.mse_loss(self.linear(x).squeeze(-1), y), {}


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g)
    return TensorDataset(x, x.sum(dim=1))


def train(run, lr=0.01, epochs=2.0, resume=None, **extra):
    cfg = TrainConfig(epochs=epochs, batch_size=8, lr=lr, save_every_steps=2, log_every_steps=1,
                      tracking=TrackingConfig(tensorboard=False), **extra)
    torch.manual_seed(0)
    return fit(Tiny(), data(), cfg, run, loss_fn=lambda m, b: m(*b), seed=0, resume=resume,
               run_config=cfg, variant="tiny")


def test_resume_with_another_config_is_refused_naming_the_keys(tmp_path):
    run = tmp_path / "run"
    train(run)
    config_before = (run / "config.yaml").read_text()
    with pytest.raises(CheckpointError, match=r"lr: 0.01 → 0.5") as info:
        train(run, lr=0.5, resume="latest")
    assert "allow_config_change" in str(info.value) and "\n" not in str(info.value)
    assert (run / "config.yaml").read_text() == config_before, "a refused resume must not rewrite config.yaml"


def test_a_deliberate_change_resumes_and_is_recorded(tmp_path):
    run = tmp_path / "run"
    train(run)
    train(run, epochs=3.0, resume="latest", allow_config_change=True)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config_changes_allowed"] == ["epochs: 2.0 → 3.0"]
    assert json.loads((run / "complete.json").read_text())["step"] == 12


def test_a_restart_starts_a_fresh_log_and_a_resume_drops_the_redone_steps(tmp_path):
    run = tmp_path / "run"
    train(run)
    steps = [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len(steps) == len(set(steps))
    # Resume from step 6: the lines of steps 7 and 8 are redone, not doubled.
    (run / "checkpoints" / "step-00000008.pt").unlink()
    train(run, resume="latest")
    again = [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert again == steps


def test_batch_size_larger_than_the_data_is_one_config_line(tmp_path):
    cfg = TrainConfig(epochs=1.0, batch_size=64, tracking=TrackingConfig(tensorboard=False))
    with pytest.raises(ConfigError, match=r"train\.batch_size 64 is larger than the 32 training samples"):
        fit(Tiny(), data(), cfg, tmp_path / "run", loss_fn=lambda m, b: m(*b), seed=0)


def test_a_full_disk_is_one_line_naming_the_path(tmp_path):
    from medrepro import atomic, checkpoint
    from medrepro.errors import OutOfSpaceError

    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)],
                             capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights) to fill a filesystem")
    try:
        with pytest.raises(OutOfSpaceError, match=r"no space left on the device holding .*big\.bin") as info:
            atomic.write_bytes(small / "big.bin", b"x" * (1 << 20))
        assert "\n" not in str(info.value) and not list(small.iterdir()), "nothing partial is left behind"
        # torch.save reports a full disk as a RuntimeError from its zip writer.
        with pytest.raises(OutOfSpaceError, match=r"step\.pt"):
            checkpoint.save(small / "step.pt", {"model": {"w": torch.zeros(1 << 18)}})
    finally:
        subprocess.run(["umount", "--lazy", str(small)], check=False)


def test_weights_of_another_variant_are_refused(tmp_path):
    from medrepro import checkpoint

    run = tmp_path / "run"
    train(run)
    saved = checkpoint.load(run / "final.pt")
    checkpoint.check_variant(saved, "tiny", run / "final.pt")
    with pytest.raises(CheckpointError, match="holds weights of variant 'tiny', not 'biobert'"):
        checkpoint.check_variant(saved, "biobert", run / "final.pt")


def test_the_report_leaves_out_results_of_an_unfinished_run(tmp_path):
    from medrepro.suite.report import experiment_section

    for variant, complete in (("a", True), ("b", False)):
        out = tmp_path / variant
        out.mkdir()
        (out / "details.json").write_text(json.dumps({"accuracy": 0.9}))
        (out / "info.json").write_text(json.dumps({"data": "synthetic", "run": {"complete": complete}}))
    reference = {"title": "t", "columns": [{"metric": "accuracy", "label": "Accuracy"}], "notes": ""}
    text = experiment_section("x", ["a", "b"], tmp_path, reference)
    assert "| a | synthetic | 0.900 |" in text and "| b | incomplete run, not reported |" in text


def test_an_output_lock_leaves_nothing_in_the_project(tmp_path):
    out = tmp_path / "data" / "exp" / "prepared"
    with (run_guard.exclusive_output(out), pytest.raises(RunError, match=r"prepared is in use by pid"),
          run_guard.exclusive_output(out)):
        pass
    assert not (tmp_path / "data").exists()


def test_a_refused_block_leaves_no_lock_and_no_directory(tmp_path):
    run = tmp_path / "runs" / "exp" / "variant"
    with pytest.raises(RunError, match="refused"), run_guard.exclusive(run):
        raise RunError("refused")
    assert not (tmp_path / "runs").exists()


def test_a_failed_block_keeps_what_it_wrote_and_what_was_there(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RunError), run_guard.exclusive(run):
        (run / "checkpoints").mkdir()
        raise RunError("stopped")
    assert sorted(p.name for p in run.iterdir()) == [".lock", "checkpoints"]
    # A lock the directory already had stays, like the directory itself.
    (run / "checkpoints").rmdir()
    with pytest.raises(RunError), run_guard.exclusive(run):
        raise RunError("refused")
    assert [p.name for p in run.iterdir()] == [".lock"]


def test_a_resume_with_nothing_to_resume_leaves_nothing(tmp_path):
    with pytest.raises(CheckpointError, match="no step-"):
        train(tmp_path / "run", resume="latest")
    assert list(tmp_path.iterdir()) == []
