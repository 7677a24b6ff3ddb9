"""A training run's directory: its layout and its life cycle, spelled in this one place.

    <run>/.lock                     held by the process writing the directory (see `run_guard`)
    <run>/config.yaml               the resolved config of the run
    <run>/manifest.json             environment, data checksums, processes, identity hash
    <run>/checkpoints/step-N.pt     the last K training states; checkpoints/best.pt the best by a metric
    <run>/final.pt                  the weights at the end of training
    <run>/fit.json                  the shared loop's result (steps, rates, health signs)
    <run>/train_log.jsonl           the numbers logged per step (the training curves)
    <run>/tensorboard/              TensorBoard's events; tracking.json names the runs the trackers opened
                                    (MLflow's default store is the experiment's, <paths.runs>/mlruns)
    <run>/complete.json             written last: {variant, identity, step, best_step, parts}

A variant trained several times (once per training seed) keeps one such directory per training run
below its own (`part`), and its own complete.json lists them under `parts`; `step` is then the longest
part's and `best_step` -1 (each part records its own).

Life cycle: `begin` (under `locked`) clears the completion mark and writes config and manifest, the
trainer saves checkpoints into `checkpoints`, `save_final` and `mark_complete` end the run; readers
ask `completion` whether a finished run of their variant is there, and `load` for a checkpoint's
weights, verified against its digest and refused if trained for another variant.
"""

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medrepro import atomic, config, run_guard
from medrepro.errors import CheckpointError, RunError

if TYPE_CHECKING:
    from torch import nn

# `medrepro.checkpoint` and `medrepro.repro` import torch: they are imported where a method needs them,
# so that the command line can check a run directory (completion, lock) before torch loads.

CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "manifest.json"
CHECKPOINT_DIR = "checkpoints"
BEST_FILE = "best.pt"
FINAL_FILE = "final.pt"
FIT_FILE = "fit.json"
TRAIN_LOG = "train_log.jsonl"
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DIR = "mlruns"
TRACKING_FILE = "tracking.json"
COMPLETE_FILE = "complete.json"


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    def __truediv__(self, name: str) -> Path:
        """A file of the experiment's own inside the run (an export, open_clip_train's logs...)."""
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def best(self) -> Path:
        return self.checkpoints / BEST_FILE

    @property
    def final(self) -> Path:
        return self.path / FINAL_FILE

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def manifest_file(self) -> Path:
        return self.path / MANIFEST_FILE

    @property
    def fit_file(self) -> Path:
        return self.path / FIT_FILE

    @property
    def train_log(self) -> Path:
        return self.path / TRAIN_LOG

    @property
    def tracking_file(self) -> Path:
        return self.path / TRACKING_FILE

    @property
    def complete_file(self) -> Path:
        return self.path / COMPLETE_FILE

    def part(self, name: str) -> "RunDir":
        """One training run of several kept below this one (e.g. `seed-0`)."""
        return RunDir(self.path / name)

    def parts(self) -> list["RunDir"]:
        """The parts this run's completion mark lists (none for a single run)."""
        mark = json.loads(self.complete_file.read_text()) if self.complete_file.is_file() else {}
        return [self.part(name) for name in mark.get("parts", [])]

    # -- writing ---------------------------------------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator["RunDir"]:
        """Hold the directory's lock (created if need be); a second writer gets one line."""
        with run_guard.exclusive(self.path):
            yield self

    def step_checkpoints(self) -> list[Path]:
        from medrepro import checkpoint

        return checkpoint.step_checkpoints(self.checkpoints)

    def begin(self, run_config: Any, *, variant: str, checksums: dict[str, str] | None = None,
              data: Sequence[str | Path] = (), extra: dict[str, Any] | None = None) -> None:
        """Start (or resume) writing: the run is complete again only when it ends; its resolved config
        and manifest (environment, checksums of `data` or the given ones, `extra`) are written now."""
        from medrepro import repro

        self.path.mkdir(parents=True, exist_ok=True)
        self.complete_file.unlink(missing_ok=True)
        config.save_config(run_config, self.config_file, comment=f"variant: {variant}" if variant else "")
        repro.write_manifest(self.manifest_file, data=data, checksums=checksums,
                             extra={"variant": variant, **(extra or {})})

    def add_to_manifest(self, values: dict[str, Any]) -> None:
        manifest = json.loads(self.manifest_file.read_text())
        manifest.update(values)
        atomic.write_json(self.manifest_file, manifest)

    def save_final(self, state: dict[str, Any]) -> None:
        """The end-of-training weights, with the run's identity and training state."""
        from medrepro import checkpoint

        checkpoint.save(self.final, state)

    def mark_complete(self, variant: str, identity: str, step: int, best_step: int,
                      parts: Sequence["RunDir"] = ()) -> None:
        atomic.write_json(self.complete_file, {"variant": variant, "identity": identity, "step": step,
                                               "best_step": best_step,
                                               "parts": [p.path.relative_to(self.path).as_posix() for p in parts]})

    # -- reading ---------------------------------------------------------------------------------------

    def is_complete(self) -> bool:
        return self.complete_file.is_file()

    def completion(self, variant: str, hint: str) -> dict[str, Any]:
        """The completion mark of a finished run of `variant`; one line if it is missing or for another
        variant. `hint` says what to do about an unfinished run, with the command that finishes it."""
        if not self.complete_file.is_file():
            raise RunError(f"{self.path} holds no finished run ({COMPLETE_FILE} missing): {hint}")
        mark = json.loads(self.complete_file.read_text())
        if mark.get("variant") != variant:
            raise RunError(f"{self.path} is a run of variant {mark.get('variant')!r}, not {variant!r}: pass the "
                           "matching --variant, or --run with that variant's run directory")
        return mark

    def validation_at(self, step: int) -> dict[str, float]:
        """The validation numbers (`val/...`) the run logged at `step`; empty if it did not evaluate there."""
        if not self.train_log.is_file():
            return {}
        rows = [json.loads(line) for line in self.train_log.read_text().splitlines()]
        return {k: v for row in rows if row.get("step") == step for k, v in row.items() if k.startswith("val/")}

    def checkpoint_path(self, which: str) -> Path:
        """`best`, `final`, or a checkpoint file named by the user."""
        return {"best": self.best, "final": self.final}.get(which, Path(which))

    def load(self, which: str, variant: str) -> dict[str, Any]:
        """A checkpoint's saved state, verified against its digest; refused if trained for another variant."""
        from medrepro import checkpoint

        path = self.checkpoint_path(which)
        saved = checkpoint.load(path)
        checkpoint.check_variant(saved, variant, path)
        return saved

    def load_into(self, model: "nn.Module", which: str, variant: str) -> dict[str, Any]:
        """`load`, then its weights into `model`; a checkpoint of another architecture gets one line."""
        saved = self.load(which, variant)
        try:
            model.load_state_dict(saved["model"])
        except RuntimeError as e:
            raise CheckpointError(f"{self.checkpoint_path(which)} does not hold weights of this model: "
                                  f"{str(e).splitlines()[0][:200]}") from None
        return saved
