"""Accelerate's trackers in the shared loop: TensorBoard (with hparams) and MLflow under the same metric
names, one MLflow store per experiment, test metrics logged by a later process, W&B offline with a key
that is never written down; the progress bar and lines."""

import io
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from medrepro import tracking
from medrepro.config_sections import TrackingConfig
from medrepro.trainer import fit
from tests.unit.test_trainer import FakeClock, config, data, make_model, mse


def tensorboard_run(run_dir) -> EventAccumulator:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return events


def test_tensorboard_and_mlflow_get_the_config_and_the_same_metric_names(tmp_path):
    cfg = config(tracking={"tensorboard": True, "mlflow": True})
    fit(make_model(), data(), cfg, tmp_path, loss_fn=mse, seed=0, evaluate=lambda m: {"val/loss": 1.0},
        run_name="lin")
    # evaluate logs from a later process, which has none of MLflow's state (or opt-ins) of this one
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_ALLOW_FILE_STORE"}
    logged = subprocess.run([sys.executable, "-c", "import sys; from medrepro import tracking; from "
                             "medrepro.config_sections import TrackingConfig; print(tracking.log_test_metrics("
                             "sys.argv[1], TrackingConfig(), 'lin', {'acc': 0.75}, step=8))", str(tmp_path)],
                            env=env, capture_output=True, text=True)
    assert logged.stdout.strip() == "['tensorboard', 'mlflow']", logged.stderr[-2000:]

    events = tensorboard_run(tmp_path)
    tb_names = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/loss", "test/acc"} <= tb_names
    assert events.Scalars("test/acc")[0].step == 8 and events.Scalars("test/acc")[0].value == 0.75
    # The hparams session lives in the run's own directory, so the HParams view pairs it with these scalars.
    session = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
    assert session.hparams["train.lr"].number_value == 0.05 and session.hparams["train.schedule"].string_value

    import mlflow

    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    runs = mlflow.search_runs(experiment_names=["medrepro"], output_format="list")
    assert len(runs) == 1, "evaluate logs into the training run, not a new one"
    assert set(runs[0].data.metrics) == tb_names
    assert runs[0].data.params["train.lr"] == "0.05" and runs[0].data.tags["mlflow.runName"] == "lin"
    opened = json.loads((tmp_path / "tracking.json").read_text())
    assert opened["mlflow_run_id"] == runs[0].info.run_id


def test_no_tracker_means_no_tracking_files_and_nothing_to_log(tmp_path):
    fit(make_model(), data(), config(), tmp_path, loss_fn=mse, seed=0)
    assert not (tmp_path / "tensorboard").exists() and not (tmp_path / "mlruns").exists()
    assert tracking.log_test_metrics(tmp_path, TrackingConfig(), "x", {"acc": 1.0}, step=8) == []


def test_wandb_runs_offline_and_its_key_is_never_written(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    secret = "0123456789abcdef-not-a-real-key-5f3c9a"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    fit(make_model(), data(), config(tracking={"tensorboard": False, "wandb": True}), run, loss_fn=mse, seed=0)
    assert list((run / "wandb").glob("offline-run-*")), "the offline run lives inside the run directory"
    opened = json.loads((run / "tracking.json").read_text())
    assert opened["wandb_project"] == "medrepro" and opened["wandb_run_id"]
    for name in ("config.yaml", "manifest.json", "fit.json", "tracking.json", "train_log.jsonl"):
        assert secret not in (run / name).read_text(), name
    for path in (run / "wandb").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_a_stopped_run_closes_its_mlflow_run(tmp_path):
    from medrepro.errors import TrainingError

    def diverging(model, batch):
        return mse(model, batch)[0] * float("nan"), {}

    with pytest.raises(TrainingError, match="diverged"):
        fit(make_model(), data(), config(tracking={"tensorboard": False, "mlflow": True}), tmp_path,
            loss_fn=diverging, seed=0)
    import mlflow

    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    runs = mlflow.search_runs(experiment_names=["medrepro"], output_format="list")
    assert [r.info.status for r in runs] == ["FINISHED"]


def test_mlflow_never_calls_home(tmp_path):
    """MLflow's telemetry thread would reach the internet and, at a network-dependent moment, draw from
    Python's global `random`, whose state every checkpoint saves: opening an MLflow tracker starts no
    telemetry client."""
    script = ("import sys; from pathlib import Path; from medrepro import tracking\n"
              "from medrepro.config_sections import TrackingConfig\n"
              "tracking.build_trackers(TrackingConfig(tensorboard=False, mlflow=True), Path(sys.argv[1]), 'x')\n"
              "from mlflow.telemetry.client import get_telemetry_client\n"
              "print(get_telemetry_client())")
    # MLflow also stays quiet under pytest and CI (their variables): a user's shell has neither.
    quiet = ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS")
    env = {k: v for k, v in os.environ.items() if k not in quiet}
    shown = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True)
    assert shown.stdout.strip() == "None", shown.stdout + shown.stderr[-2000:]


def test_evaluate_logs_test_metrics_into_every_seed_part_at_its_last_step(tmp_path):
    """`evaluate` of a variant trained once per seed writes test/<name> into each part's trackers."""
    from types import SimpleNamespace

    from medrepro.results import Evaluation
    from medrepro.rundir import RunDir
    from medrepro.suite.commands import _log_test_metrics

    cfg = config(tracking={"tensorboard": True, "test_metrics": True})
    run = RunDir(tmp_path / "run")
    parts = [run.part("seed-0"), run.part("seed-1")]
    for part in parts:
        fit(make_model(), data(), cfg, part, loss_fn=mse, seed=0, run_name="lin")
    run.mark_complete("v", "abc", 8, -1, parts)
    _log_test_metrics(SimpleNamespace(name="x"), SimpleNamespace(train=cfg), "v", run,
                      Evaluation({"acc": 0.75}, {}, {}))
    for part in parts:
        scalars = tensorboard_run(part.path).Scalars("test/acc")
        assert [(s.step, s.value) for s in scalars] == [(json.loads(part.fit_file.read_text())["state"]["step"], 0.75)]


# ------------------------------------------------------------------------- one MLflow store per experiment


def test_every_variant_and_seed_lands_in_the_experiments_one_mlflow_store(tmp_path, monkeypatch):
    """retclip's layout, runs/retclip/<variant>/seed-<seed>: one file store, <paths.runs>/mlruns, holding one
    MLflow experiment named retclip with a run per variant and seed, named by them; the variant and the
    training seed are hyperparameters in MLflow and TensorBoard, the config's data seed stays beside them."""
    import dataclasses
    from pathlib import Path

    import mlflow

    from experiments.retclip.config import RetClipConfig

    monkeypatch.chdir(tmp_path)  # paths.runs is relative to the working directory, as DVC runs the stages
    run_config = RetClipConfig(seed=7)
    cfg = config(tracking={"tensorboard": True, "mlflow": True})
    trained = [("pubmedbert", 0), ("pubmedbert", 1), ("biobert", 0)]
    for variant, seed in trained:
        fit(make_model(), data(), cfg, Path("runs/retclip") / variant / f"seed-{seed}", loss_fn=mse, seed=seed,
            run_name=f"retclip-{variant}-seed{seed}", run_config=dataclasses.replace(run_config, seeds=[seed]),
            variant=variant)

    store = tmp_path / "runs" / "retclip" / "mlruns"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("mlruns")) == [Path("runs/retclip/mlruns")]
    mlflow.set_tracking_uri(store.as_uri())
    assert [e.name for e in mlflow.search_experiments() if e.name != "Default"] == ["retclip"]
    runs = mlflow.search_runs(experiment_names=["retclip"], output_format="list")
    assert sorted((r.data.tags["mlflow.runName"], r.data.params["variant"], r.data.params["seed"],
                   r.data.params["config.seed"]) for r in runs) == [
        ("retclip-biobert-seed0", "biobert", "0", "7"), ("retclip-pubmedbert-seed0", "pubmedbert", "0", "7"),
        ("retclip-pubmedbert-seed1", "pubmedbert", "1", "7")]
    for variant, seed in trained:
        run_dir = tmp_path / "runs" / "retclip" / variant / f"seed-{seed}"
        assert json.loads((run_dir / "tracking.json").read_text())["mlflow_uri"] == store.as_uri()
        session = plugin_data_pb2.HParamsPluginData.FromString(
            tensorboard_run(run_dir).PluginTagToContent("hparams")["_hparams_/session_start_info"]
        ).session_start_info
        assert session.hparams["variant"].string_value == variant
        assert session.hparams["seed"].number_value == seed and session.hparams["config.seed"].number_value == 7


def test_a_configured_mlflow_store_and_experiment_win_over_the_experiments(tmp_path, monkeypatch):
    from experiments.exmed_bert.config import ExMedBertConfig

    monkeypatch.chdir(tmp_path)
    resolved = tracking.for_experiment(TrackingConfig(mlflow=True), ExMedBertConfig())
    assert resolved.mlflow_experiment == "exmed_bert"
    assert resolved.mlflow_tracking_uri == (tmp_path / "runs" / "exmed_bert" / "mlruns").as_uri()
    chosen = TrackingConfig(mlflow=True, mlflow_tracking_uri="http://mlflow.internal:5000", mlflow_experiment="mine")
    assert tracking.for_experiment(chosen, ExMedBertConfig()) == chosen
    # A loop without an experiment's config: its own run directory's store (mlflow_uri), experiment medrepro.
    assert tracking.for_experiment(TrackingConfig(mlflow=True), None) == TrackingConfig(mlflow=True)


def test_hparams_carry_the_variant_and_the_training_seed():
    assert tracking.hparams({"seed": 3, "train": {"lr": 0.1, "betas": [0.9, 0.99]}}, "biobert", 3) == {
        "seed": 3, "train.lr": 0.1, "train.betas": "[0.9, 0.99]", "variant": "biobert"}
    # A config seed that is not the training seed (retclip's data seed) is kept under another name.
    assert tracking.hparams({"seed": 7}, "biobert", 1) == {"config.seed": 7, "variant": "biobert", "seed": 1}


# ---------------------------------------------------------------------------------------- progress line


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_a_bar_shows_the_step_under_the_logged_lines(monkeypatch):
    """0.5 s a step of 16 samples: the bar ends at 12/12 with the last line's loss, lr, rate and ETA as its
    postfix; the line itself is written above the bar, whole."""
    clock = FakeClock()
    monkeypatch.setattr(tracking, "time", clock)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with tracking.Progress(12, 0, 16, 4) as progress:
        for step in range(1, 13):
            clock.now += 0.5
            progress.advance(step)
        tracking.Progress.emit(progress.line(12, 0.5, 0.01))
    out = terminal.getvalue()
    line = re.compile(r"step 12/12 \| epoch 3\.00 \| loss 0\.5000 \| lr 0\.01 \| 32\.0 samples/s \| 0\.5 s/step \| "
                      r"elapsed 00:06 \| eta 00:00 \| mem [^\r\n]+")
    assert len(line.findall(out)) == 1 and re.search(r"(^|\r)" + line.pattern + "\n", out), out
    bar = [piece for piece in re.split(r"[\r\n]", out) if piece.strip()][-1]
    assert bar.startswith("100%|") and bar.endswith("| 12/12, loss 0.5000 | lr 0.01 | 32.0 samples/s | eta 00:00"), bar


def test_only_the_main_process_draws_a_bar(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with tracking.Progress(12, 0, 16, 4, show=False) as progress:
        progress.advance(12)
        progress.line(12, 0.5, 0.01)
    assert terminal.getvalue() == ""


def test_memory_on_a_gpu_is_its_peak_allocation(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "utilization", lambda: 87)
    assert tracking.memory_in_use() == "3.0G, GPU 87% busy"
