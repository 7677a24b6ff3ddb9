"""Where training numbers go: a console progress line, a JSON-lines log, and Accelerate's trackers
(TensorBoard, MLflow, Weights & Biases).

The trackers are Accelerate's own (`Accelerator(log_with=...)`, `init_trackers`, `accelerator.log`),
with one exception in how hyperparameters reach TensorBoard: Accelerate's `TensorBoardTracker`
writes them with `SummaryWriter.add_hparams`, which puts them in a separate, timestamped run
directory, and TensorBoard's HParams view pairs hyperparameters only with the scalars of their own
run (and its subdirectories). So the loss curves and test metrics would never appear beside the
config. `RunTrackers` writes the hparams session into the tracker's own writer instead; every other
call goes through Accelerate.

MLflow's default store is one file store per experiment, `<paths.runs>/mlruns`, holding one MLflow
experiment named after ours: every variant's runs (and their seeds) side by side in one `mlflow ui`.
Every run's hyperparameters carry its `variant` and `seed`, so runs group by variant in TensorBoard's
HParams view and in MLflow.

Every run records what it opened in `tracking.json`, so that `evaluate`, a later process, logs the
test metrics into the same TensorBoard directory, MLflow run and W&B run (`log_test_metrics`).
Metric names are the same everywhere (`train/loss`, `val/...`, `test/...`).

The console side is `Progress`: tqdm's bar on a terminal, plain lines everywhere else.
"""

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from medrepro import atomic, config
from medrepro.config_sections import OutputPaths, TrackingConfig
from medrepro.rundir import MLFLOW_DIR, TENSORBOARD_DIR, TRACKING_FILE, TRAIN_LOG

# The MLflow experiment of a loop run without an experiment's config around it (tests, benchmarks).
DEFAULT_EXPERIMENT = "medrepro"


def memory_in_use() -> str:
    if torch.cuda.is_available():
        try:  # utilisation is read through NVML, which a CUDA build of torch may lack
            busy = f", GPU {torch.cuda.utilization()}% busy"
        except (ModuleNotFoundError, RuntimeError):
            busy = ""
        return f"{torch.cuda.max_memory_allocated() / 2**30:.1f}G{busy}"
    try:
        import resource  # not on Windows

        return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f}G rss"
    except ImportError:
        return "n/a"


def for_experiment(cfg: TrackingConfig, run_config: Any) -> TrackingConfig:
    """`cfg` with MLflow's defaults made explicit for a run of `run_config`, an experiment's resolved config:
    the file store `<paths.runs>/mlruns` that all the experiment's runs share, and an MLflow experiment
    named after the experiment (the package its config is declared in, experiments/<name>/, as
    `OutputPaths` derives paths.runs). Anything else keeps them unset (see `mlflow_uri`)."""
    paths = getattr(run_config, "paths", None)
    if not isinstance(paths, OutputPaths):
        return cfg
    package = type(run_config).__module__.split(".")
    name = package[1] if package[0] == "experiments" and len(package) > 2 else ""
    return dataclasses.replace(cfg, mlflow_tracking_uri=cfg.mlflow_tracking_uri or
                               (Path(paths.runs) / MLFLOW_DIR).resolve().as_uri(),
                               mlflow_experiment=cfg.mlflow_experiment or name)


def mlflow_uri(cfg: TrackingConfig, run_dir: Path) -> str:
    """The configured (or `for_experiment`'s) URI, else a file store inside the run directory; either way
    nothing leaves the machine by default."""
    if cfg.mlflow_tracking_uri:
        return cfg.mlflow_tracking_uri
    return (run_dir / MLFLOW_DIR).resolve().as_uri()


def build_trackers(cfg: TrackingConfig, run_dir: Path, run_name: str, opened: dict[str, Any] | None = None) -> list:
    """Accelerate tracker objects for the enabled backends; `opened` (a run's tracking.json) reopens the
    MLflow and W&B runs it started instead of starting new ones."""
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    opened = opened or {}
    trackers = []
    if cfg.tensorboard:
        trackers.append(TensorBoardTracker(TENSORBOARD_DIR, run_dir))
    if cfg.mlflow:
        # Offline by default: MLflow's telemetry thread (started by `import mlflow`) calls home and,
        # when an answer comes, draws from Python's global `random`, at a time that depends on the
        # network; checkpoints save that generator's state, so they would differ from run to run.
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        import mlflow

        # MLflow 3 keeps the plain file store (the default, also when a run is reopened to log its test
        # metrics) behind an opt-in; it opens in well under a second, where a fresh SQLite store spends
        # ten seconds creating its tables.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")

        mlflow.set_tracking_uri(opened.get("mlflow_uri") or mlflow_uri(cfg, run_dir))
        trackers.append(MLflowTracker(experiment_name=cfg.mlflow_experiment or DEFAULT_EXPERIMENT,
                                      run_id=opened.get("mlflow_run_id"), run_name=run_name))
    if cfg.wandb:
        resume = {"id": opened["wandb_run_id"], "resume": "allow"} if opened.get("wandb_run_id") else {}
        trackers.append(WandBTracker(cfg.wandb_project, name=run_name, dir=str(run_dir), **resume))
    return trackers


def _opened(trackers: list) -> dict[str, Any]:
    """What a later process needs to log into the same runs (never a secret: ids and paths only)."""
    opened: dict[str, Any] = {}
    for tracker in trackers:
        if tracker.name == "tensorboard":
            opened["tensorboard_dir"] = tracker.logging_dir
        elif tracker.name == "mlflow":
            import mlflow

            opened.update(mlflow_uri=mlflow.get_tracking_uri(), mlflow_run_id=tracker.active_run.info.run_id,
                          mlflow_experiment=tracker.experiment_name)
        elif tracker.name == "wandb":
            opened.update(wandb_run_id=tracker.run.id, wandb_project=tracker.run.project)
    return opened


def hparams(params: dict[str, Any], variant: str, seed: int) -> dict[str, bool | int | float | str]:
    """The resolved config as flat `section.key` hyperparameters of the types every backend takes, plus the
    run's `variant` and `seed` (the training seed it ran with), by which runs are grouped. A top-level
    `seed` of the config that is another seed (an experiment's data seed) stays, as `config.seed`."""
    flat = {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in config.flatten(params).items()}
    if flat.get("seed", seed) != seed:
        flat["config.seed"] = flat.pop("seed")
    return {**flat, "variant": variant, "seed": seed}


def write_tensorboard_hparams(writer: Any, values: dict[str, Any]) -> None:
    """The hparams session in the run's own TensorBoard directory (see the module docstring)."""
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    _, session_start, session_end = hparams_summary(values, {})
    writer.file_writer.add_summary(session_start)
    writer.file_writer.add_summary(session_end)
    writer.flush()


class RunTrackers:
    """The JSON-lines log plus Accelerate's trackers of one training run (main process only)."""

    def __init__(self, accelerator: Any, run_dir: str | Path, run_name: str, values: dict[str, Any],
                 resumed_at: int | None = None):
        """`values`: the run's hyperparameters (`hparams`). `resumed_at`: the step a resumed run continues
        from; log lines after it (written by the interrupted run past its last checkpoint) are dropped,
        since they are about to be redone. A fresh run starts a fresh log."""
        self.accelerator = accelerator
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = self.run_dir / TRAIN_LOG
        kept = ""
        if resumed_at is not None and log.is_file():
            kept = "".join(line + "\n" for line in log.read_text().splitlines()
                           if line.strip() and json.loads(line)["step"] <= resumed_at)
        atomic.write_text(log, kept)
        self.log_file = open(log, "a")  # noqa: SIM115 - closed in close()
        previous = _read_opened(self.run_dir) if resumed_at is not None else {}
        accelerator.init_trackers(run_name)
        for tracker in accelerator.trackers:
            if tracker.name == "tensorboard":
                write_tensorboard_hparams(tracker.writer, values)
            elif not (tracker.name in ("mlflow", "wandb") and previous.get(f"{tracker.name}_run_id")):
                tracker.store_init_configuration(values)  # a resumed MLflow/W&B run has them already
        atomic.write_json(self.run_dir / TRACKING_FILE, _opened(accelerator.trackers))

    def log(self, step: int, values: dict[str, float]) -> None:
        self.log_file.write(json.dumps({"step": step, **values}, sort_keys=True) + "\n")
        self.log_file.flush()
        self.accelerator.log(values, step=step)

    def close(self) -> None:
        """The log only: the loop finishes the trackers themselves on every process once all are done."""
        self.log_file.close()


def _read_opened(run_dir: Path) -> dict[str, Any]:
    path = run_dir / TRACKING_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def log_test_metrics(run_dir: str | Path, cfg: TrackingConfig, run_name: str, metrics: dict[str, float],
                     step: int) -> list[str]:
    """Log `metrics` as `test/<name>` at `step` into the trackers the training run opened (its
    tracking.json); returns the names of the trackers written. A run without tracking.json (trained
    before it existed, or with every tracker off) gets nothing."""
    run_dir = Path(run_dir)
    opened = _read_opened(run_dir)
    enabled = TrackingConfig(tensorboard="tensorboard_dir" in opened, mlflow="mlflow_run_id" in opened,
                             mlflow_experiment=opened.get("mlflow_experiment", cfg.mlflow_experiment),
                             wandb="wandb_run_id" in opened,
                             wandb_project=opened.get("wandb_project", cfg.wandb_project))
    trackers = build_trackers(enabled, run_dir, run_name, opened)
    values = {f"test/{k}": float(v) for k, v in metrics.items()}
    for tracker in trackers:
        tracker.start()
        tracker.log(values, step=step)
        tracker.finish()
    return [t.name for t in trackers]


class Progress:
    """Where training stands, on the console: on a terminal, tqdm's bar (step/total) under one line per
    logging step; anywhere else (DVC, CI, a file) the lines alone, since a bar there is a stream of
    carriage returns. A line: step/total, epoch, loss (and the loss function's extras), lr, samples/s,
    time per step, elapsed, ETA, memory (GPU memory and utilisation on a GPU).

    Throughput, elapsed time and ETA count training time only: the loop reports the seconds it spent
    evaluating and checkpointing (`pause`), which would otherwise show up as a tenfold drop at every
    evaluation. For that reason the bar shows our numbers, not tqdm's own rate and ETA.
    """

    def __init__(self, total_steps: int, start_step: int, samples_per_step: int, steps_per_epoch: int,
                 show: bool = True):
        """`show`: this process draws the bar (the main process; every process keeps the time)."""
        self.total, self.start = total_steps, start_step
        self.samples_per_step, self.steps_per_epoch = samples_per_step, steps_per_epoch
        self.t0 = self.t_last = time.perf_counter()
        self.step_last = start_step
        self.paused = self.paused_since_last = 0.0
        # disable=None: tqdm draws only on a terminal. Read at construction, like the stream itself.
        self.bar = tqdm(total=total_steps, initial=start_step, file=sys.stderr, disable=None if show else True,
                        dynamic_ncols=True, mininterval=1.0, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt}{postfix}")

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def advance(self, step: int) -> None:
        """One optimizer step done; the bar moves (tqdm redraws at most once a second)."""
        self.bar.update(step - self.bar.n)

    def pause(self, seconds: float) -> None:
        self.paused += seconds
        self.paused_since_last += seconds

    def training_seconds(self) -> float:
        return time.perf_counter() - self.t0 - self.paused

    def line(self, step: int, loss: float, lr: float, extras: dict[str, float] | None = None) -> str:
        """The logging step's line; the bar's postfix takes its short form."""
        now = time.perf_counter()
        rate = (step - self.step_last) * self.samples_per_step / max(now - self.t_last - self.paused_since_last, 1e-9)
        per_step = self.training_seconds() / max(step - self.start, 1)
        self.t_last, self.step_last, self.paused_since_last = now, step, 0.0
        eta = tqdm.format_interval(per_step * (self.total - step))
        shown = "".join(f" | {k} {v:.4g}" for k, v in (extras or {}).items())
        self.bar.set_postfix_str(f"loss {loss:.4f} | lr {lr:.3g} | {rate:.1f} samples/s | eta {eta}", refresh=False)
        return (f"step {step}/{self.total} | epoch {step / self.steps_per_epoch:.2f} | loss {loss:.4f}{shown} | "
                f"lr {lr:.3g} | {rate:.1f} samples/s | {per_step:.3g} s/step | "
                f"elapsed {tqdm.format_interval(self.training_seconds())} | eta {eta} | mem {memory_in_use()}")

    @staticmethod
    def emit(text: str) -> None:
        """A line to stderr, above the bar if one is drawn (tqdm clears and redraws it)."""
        tqdm.write(text, file=sys.stderr)
        sys.stderr.flush()
