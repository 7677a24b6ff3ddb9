"""Where training numbers go: a console progress line, a JSON-lines log, TensorBoard, MLflow.

Only the main process creates a tracker; the others get `None` and log nothing.
"""

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from medrepro import atomic, config
from medrepro.config_sections import TrackingConfig


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def memory_in_use() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.max_memory_allocated() / 2**30:.1f}G"
    try:
        import resource  # not on Windows

        return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f}G rss"
    except ImportError:
        return "n/a"


class Tracker:
    def __init__(self, run_dir: str | Path, cfg: TrackingConfig, run_name: str, params: dict[str, Any],
                 resumed_at: int | None = None):
        """`resumed_at`: the step a resumed run continues from; log lines after it (written by the
        interrupted run past its last checkpoint) are dropped, since they are about to be redone.
        A fresh run starts a fresh log."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = self.run_dir / "train_log.jsonl"
        kept = ""
        if resumed_at is not None and log.is_file():
            kept = "".join(line + "\n" for line in log.read_text().splitlines()
                           if line.strip() and json.loads(line)["step"] <= resumed_at)
        atomic.write_text(log, kept)
        self.log_file = open(log, "a")  # noqa: SIM115 - closed in close()
        self.tb = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        self.mlflow = None
        if cfg.mlflow:
            import mlflow

            if not cfg.mlflow_tracking_uri:
                # MLflow 3 keeps the plain file store behind an opt-in; a database store would need
                # SQLAlchemy, which mlflow-skinny leaves out. A server or database URI works as set.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = cfg.mlflow_tracking_uri or (self.run_dir / "mlruns").resolve().as_uri()
            mlflow.set_tracking_uri(uri)
            mlflow.set_experiment(cfg.mlflow_experiment)
            mlflow.start_run(run_name=run_name)
            mlflow.log_params(config.flatten(params))
            self.mlflow = mlflow

    def log(self, step: int, values: dict[str, float]) -> None:
        self.log_file.write(json.dumps({"step": step, **values}, sort_keys=True) + "\n")
        self.log_file.flush()
        if self.tb is not None:
            for name, value in values.items():
                self.tb.add_scalar(name, value, step)
        if self.mlflow is not None:
            self.mlflow.log_metrics({k.replace("/", "_"): v for k, v in values.items()}, step=step)

    def close(self) -> None:
        self.log_file.close()
        if self.tb is not None:
            self.tb.close()
        if self.mlflow is not None:
            self.mlflow.end_run()


class Progress:
    """One console line per logging step: step, epoch, loss, lr, samples/s, ETA, memory."""

    def __init__(self, total_steps: int, start_step: int, samples_per_step: int, steps_per_epoch: int):
        self.total, self.start = total_steps, start_step
        self.samples_per_step, self.steps_per_epoch = samples_per_step, steps_per_epoch
        self.t0 = self.t_last = time.perf_counter()
        self.step_last = start_step

    def line(self, step: int, loss: float, lr: float) -> str:
        now = time.perf_counter()
        rate = (step - self.step_last) * self.samples_per_step / max(now - self.t_last, 1e-9)
        per_step = (now - self.t0) / max(step - self.start, 1)
        self.t_last, self.step_last = now, step
        return (f"step {step}/{self.total} | epoch {step / self.steps_per_epoch:.2f} | loss {loss:.4f} | "
                f"lr {lr:.3g} | {rate:.1f} samples/s | eta {format_duration(per_step * (self.total - step))} | "
                f"mem {memory_in_use()}")

    @staticmethod
    def emit(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

