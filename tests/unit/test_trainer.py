"""The shared loop on a tiny linear regression: accumulation, early stopping, pruning, trackers."""

import json
import re
import time
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from medrepro import checkpoint, tracking, trainer
from medrepro.config_sections import TrainConfig
from medrepro.errors import ConfigError, TrainingError
from medrepro.trainer import fit


def data(n: int = 64) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(n, generator=g))


def mse(model: nn.Module, batch) -> tuple[torch.Tensor, dict]:
    x, y = batch
    return ((model(x).squeeze(-1) - y) ** 2).mean(), {}


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 1)


def config(**kw) -> TrainConfig:
    base = {"epochs": 2, "batch_size": 16, "lr": 0.05, "log_every_steps": 4, "tracking": {"tensorboard": False}}
    base.update(kw)
    from medrepro.config import from_dict

    return from_dict(TrainConfig, base)


class FakeClock:
    """The `time` module of the trainer and of its progress line, with a `perf_counter` that moves only when
    a test says so: durations are then exact, however loaded the machine is."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(trainer, "time", fake)
    monkeypatch.setattr(tracking, "time", fake)
    return fake


def test_accumulation_matches_one_big_batch(tmp_path):
    """A mean loss over 2 micro-batches of 8, accumulated, steps like one batch of 16."""
    one, two = make_model(), make_model()
    fit(one, data(), config(grad_accum=1), tmp_path / "a", loss_fn=mse, seed=0)
    fit(two, data(), config(grad_accum=2), tmp_path / "b", loss_fn=mse, seed=0)
    for p, q in zip(one.parameters(), two.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_training_reduces_the_loss_and_writes_the_run(tmp_path):
    model = make_model()
    before = mse(model, data()[:])[0].item()
    result = fit(model, data(), config(epochs=25, lr=0.2), tmp_path, loss_fn=mse, seed=0)
    assert mse(model, data()[:])[0].item() < 0.05 * before
    assert result.state.step == 100 and result.samples_per_s > 0
    logged = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == list(range(4, 101, 4))
    assert logged[-1]["train/lr"] == pytest.approx(0.0, abs=1e-12), "cosine ends at min_lr_ratio 0"
    assert json.loads((tmp_path / "fit.json").read_text())["state"]["step"] == 100


def test_start_line_and_summary_say_what_runs_and_what_came_out(tmp_path, capsys, clock):
    def timed_mse(model, batch):
        clock.now += 0.25  # a micro-batch: 0.5 s an optimizer step of 2, 6 s for the 12 steps
        return mse(model, batch)

    def evaluate(model):
        clock.now += 60.0  # 3 evaluations, one an epoch
        return {"val/loss": 1.0}

    result = fit(make_model(), data(), config(epochs=3, grad_accum=2), tmp_path, loss_fn=timed_mse, seed=0,
                 evaluate=evaluate, run_name="lin", variant="small")
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"train lin: run dir {tmp_path} | device cpu | 1 process(es) | parameters 5 (5 trainable)")
    assert "| 64 training samples | 12 optimizer steps (4 an epoch; batch 16 = 8 × 2 accumulation" in err[0]
    assert err[-1].startswith("done lin: step 12 | best val/loss 1 at step 4")
    assert str(tmp_path / "checkpoints" / "best.pt") in err[-1] and str(tmp_path / "final.pt") in err[-1]
    assert "no health warnings" in err[-1]
    assert "| wall 03:06 (evaluation and checkpoints 03:00) | 32.0 training samples/s |" in err[-1]
    fit_json = json.loads((tmp_path / "fit.json").read_text())
    assert (fit_json["loop_seconds"], fit_json["eval_checkpoint_seconds"], fit_json["samples_per_s"]) == \
        (result.loop_seconds, result.eval_checkpoint_seconds, result.samples_per_s) == (186.0, 180.0, 32.0)
    assert (tmp_path / "config.yaml").read_text().startswith("# variant: small\n")


def test_progress_lines_in_a_log_are_plain_lines_with_every_number(tmp_path, capsys, clock):
    """Captured stderr is no terminal (like DVC's and CI's logs): no bar, no carriage return, one line per
    logging step with step/total, epoch, loss, lr, samples/s and time per step of training time alone,
    elapsed training time, ETA and memory. 0.5 s a step and 60 s an evaluation, at the end of each epoch."""
    def timed_mse(model, batch):
        clock.now += 0.25
        return mse(model, batch)

    def evaluate(model):
        clock.now += 60.0
        return {"val/loss": 1.0}

    fit(make_model(), data(), config(epochs=3, grad_accum=2), tmp_path, loss_fn=timed_mse, seed=0,
        evaluate=evaluate)
    err = capsys.readouterr().err
    assert "\r" not in err
    progress = [line for line in err.splitlines() if line.startswith("step ")]
    # Cosine from lr 0.05 without warmup: 0.05 × (1 + cos(π s / 12)) / 2 after s steps.
    expected = [("4/12", "1.00", "0.0375", "00:02", "00:04"), ("8/12", "2.00", "0.0125", "00:04", "00:02"),
                ("12/12", "3.00", "0", "00:06", "00:00")]
    assert len(progress) == 3
    for line, (step, epoch, lr, elapsed, eta) in zip(progress, expected, strict=True):
        assert re.fullmatch(rf"step {step} \| epoch {epoch} \| loss \d+\.\d{{4}} \| lr {lr} \| 32\.0 samples/s \| "
                            rf"0\.5 s/step \| elapsed {elapsed} \| eta {eta} \| mem \d+\.\dG rss", line), line


def test_throughput_leaves_out_evaluation_and_checkpoint_time(tmp_path, capsys, clock, monkeypatch):
    """8 steps of 16 samples at 0.25 s each (2 s), 2 evaluations of 4 s, 4 checkpoints of 1 s: 64 samples/s,
    in the result and on every progress line (counted as training, the checkpoints would give 21, the
    evaluations 13, both 9)."""
    def timed_mse(model, batch):
        clock.now += 0.25
        return mse(model, batch)

    def slow_evaluate(model):
        clock.now += 4.0
        return {"val/loss": 1.0}

    real_save = checkpoint.save

    def slow_save(path, state):
        clock.now += 1.0
        real_save(path, state)

    # Every checkpoint the loop writes goes through checkpoint.save (final.pt too, after the loop's clock stops).
    monkeypatch.setattr(checkpoint, "save", slow_save)
    result = fit(make_model(), data(), config(epochs=2, save_every_steps=2), tmp_path, loss_fn=timed_mse, seed=0,
                 evaluate=slow_evaluate)
    assert (result.loop_seconds, result.eval_checkpoint_seconds) == (14.0, 12.0)
    assert result.samples_per_s == 8 * 16 / 2.0
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step ")]
    assert len(progress) == 2 and all("| 64.0 samples/s | 0.25 s/step |" in line for line in progress), progress


def test_early_stopping_fires_after_patience_and_keeps_the_best(tmp_path):
    values = iter([3.0, 2.0, 2.5, 2.4, 2.6, 1.0])  # best at the 2nd evaluation, then 3 without improvement

    def evaluate(model):
        return {"val/loss": next(values)}

    result = fit(make_model(), data(), config(epochs=6, eval_every_epochs=1.0, early_stopping_patience=3),
                 tmp_path, loss_fn=mse, seed=0, evaluate=evaluate)
    assert result.state.stopped_early
    assert result.state.step == 20, "stops at the 5th evaluation (4 steps an epoch), not later"
    assert result.state.best_value == 2.0 and result.state.best_step == 8
    best = checkpoint.load(tmp_path / "checkpoints" / "best.pt")
    assert best["train_state"]["step"] == 8


def test_no_early_stopping_without_patience(tmp_path):
    result = fit(make_model(), data(), config(epochs=3, eval_every_epochs=0.5), tmp_path, loss_fn=mse, seed=0,
                 evaluate=lambda m: {"val/loss": 1.0})
    assert not result.state.stopped_early and result.state.step == 12


def test_keeps_only_the_last_k_step_checkpoints(tmp_path):
    fit(make_model(), data(), config(epochs=3, save_every_steps=2, keep_last=2), tmp_path, loss_fn=mse, seed=0)
    names = [p.name for p in checkpoint.step_checkpoints(tmp_path / "checkpoints")]
    assert names == ["step-00000010.pt", "step-00000012.pt"]


def test_unknown_best_metric_is_a_clear_error(tmp_path):
    with pytest.raises(KeyError, match="val/auc"):
        fit(make_model(), data(), config(best_metric="val/auc"), tmp_path, loss_fn=mse, seed=0,
            evaluate=lambda m: {"val/loss": 1.0})


# ------------------------------------------------------------------------------- integrity and divergence


def loss_at(bad_steps: set[int], poison: bool):
    """mse, except at the given optimizer steps (grad_accum 1): a nan loss that, with `poison`, also makes
    every gradient nan (a real divergence) or, without, has zero gradient (a step a grad scaler skips)."""
    calls = 0

    def loss_fn(model: nn.Module, batch) -> tuple[torch.Tensor, dict]:
        nonlocal calls
        calls += 1
        loss, extras = mse(model, batch)
        if calls not in bad_steps:
            return loss, extras
        if poison:
            return loss * float("nan"), extras
        return torch.where(torch.tensor(True), torch.tensor(float("nan")), loss), extras

    return loss_fn


def assert_no_nonfinite_checkpoint(run_dir) -> list[str]:
    assert not (run_dir / "final.pt").exists()
    found = checkpoint.step_checkpoints(run_dir / "checkpoints")
    for path in found:
        assert all(torch.isfinite(t).all() for t in checkpoint.load(path)["model"].values()), path
    return [p.name for p in found]


def test_nan_loss_stops_the_run_before_a_nan_checkpoint(tmp_path):
    cfg = config(save_every_steps=1, keep_last=10)
    with pytest.raises(TrainingError) as info:
        fit(make_model(), data(), cfg, tmp_path, loss_fn=loss_at({3}, poison=True), seed=0)
    message = str(info.value)
    assert message.startswith("training diverged: loss is nan at step 3 (train.nonfinite_patience 0); lower train.lr")
    assert message.endswith(f"the last good checkpoint is {tmp_path / 'checkpoints' / 'step-00000002.pt'}")
    assert "\n" not in message
    assert assert_no_nonfinite_checkpoint(tmp_path) == ["step-00000001.pt", "step-00000002.pt"]


def test_huge_learning_rate_stops_the_run(tmp_path):
    with pytest.raises(TrainingError, match=r"^training diverged: loss is (inf|nan) at step \d+ .*; no checkpoint"):
        fit(make_model(), data(), config(lr=1e30, save_every_steps=2), tmp_path, loss_fn=mse, seed=0)
    assert_no_nonfinite_checkpoint(tmp_path)


@pytest.mark.parametrize(("bad_steps", "patience", "stops_at"),
                         [({3}, 0, 3), ({3}, 1, None), ({3, 4}, 1, 4), ({3, 5}, 1, None), ({3, 4}, 2, None)])
def test_nonfinite_patience_counts_consecutive_steps(tmp_path, bad_steps, patience, stops_at):
    cfg = config(nonfinite_patience=patience, log_every_steps=1)
    loss_fn = loss_at(bad_steps, poison=False)
    if stops_at is None:
        assert fit(make_model(), data(), cfg, tmp_path, loss_fn=loss_fn, seed=0).state.step == 8
    else:
        with pytest.raises(TrainingError, match=f"loss is nan at step {stops_at} "):
            fit(make_model(), data(), cfg, tmp_path, loss_fn=loss_fn, seed=0)


def test_nonfinite_weights_are_never_checkpointed(tmp_path):
    """A tolerated nan loss whose gradients poison the weights: the save right after it refuses."""
    cfg = config(save_every_steps=1, keep_last=10, nonfinite_patience=5)
    with pytest.raises(TrainingError, match="model weights are not finite at step 3, not checkpointed") as info:
        fit(make_model(), data(), cfg, tmp_path, loss_fn=loss_at({3}, poison=True), seed=0)
    assert str(info.value).endswith("step-00000002.pt")
    assert assert_no_nonfinite_checkpoint(tmp_path) == ["step-00000001.pt", "step-00000002.pt"]


def test_negative_patience_is_rejected():
    with pytest.raises(ConfigError, match=r"config: nonfinite_patience must be 0 or more, got -1"):
        config(nonfinite_patience=-1)


def test_start_cleans_orphans_of_a_killed_write(tmp_path):
    orphans = [tmp_path / ".fit.json.a1b2c3d4.tmp", tmp_path / "checkpoints" / ".step-00000004.pt.x_y9z8w7.tmp"]
    for orphan in orphans:
        orphan.parent.mkdir(parents=True, exist_ok=True)
        orphan.write_bytes(b"half a file")
    fit(make_model(), data(), config(), tmp_path, loss_fn=mse, seed=0)
    assert not any(orphan.exists() for orphan in orphans)


def test_resume_latest_skips_a_corrupt_checkpoint_and_ends_bitwise_equal(tmp_path, capsys):
    cfg = config(save_every_steps=2)
    fit(make_model(), data(), cfg, tmp_path, loss_fn=mse, seed=0)
    reference = checkpoint.load(tmp_path / "final.pt")["model"]
    newest = tmp_path / "checkpoints" / "step-00000008.pt"
    corrupted = bytearray(newest.read_bytes())
    corrupted[len(corrupted) // 2] ^= 0x01
    newest.write_bytes(corrupted)
    capsys.readouterr()

    fit(make_model(), data(), cfg, tmp_path, loss_fn=mse, seed=0, resume="latest")
    err = capsys.readouterr().err
    assert "--resume latest: skipping step-00000008.pt: checkpoint" in err
    assert "resumed from" in err and "step-00000006.pt at step 6" in err
    resumed = checkpoint.load(tmp_path / "final.pt")["model"]
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
