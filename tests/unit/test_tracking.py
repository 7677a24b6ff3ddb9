"""Accelerate's trackers in the shared loop: TensorBoard (with hparams) and MLflow under the same metric
names, test metrics logged by a later process, W&B offline with a key that is never written down."""

import json
import os
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from medrepro import tracking
from medrepro.config_sections import TrackingConfig
from medrepro.trainer import fit
from tests.unit.test_trainer import config, data, make_model, mse


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
