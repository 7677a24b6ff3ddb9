"""Checkpoints: atomic, full training state, the last K plus the best by a named metric.

Layout inside a run directory:
    checkpoints/step-00000120.pt   the last `keep_last` states, by optimizer step
    checkpoints/best.pt            the state with the best value of the tracked metric
Each file holds the model, optimizer, scheduler and grad-scaler states, every process's RNG states,
and the training position (step, epoch, step within the epoch), so a resumed run continues with the
exact batch, learning rate and random draws the interrupted one would have used next.
"""

import re
import shutil
from pathlib import Path
from typing import Any

import torch

from medrepro import atomic
from medrepro.errors import CheckpointError

_STEP_FILE = re.compile(r"step-(\d+)\.pt$")


def save(path: str | Path, state: dict[str, Any]) -> None:
    atomic.write_with(path, lambda tmp: torch.save(state, tmp))


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a truncated or foreign file
        raise CheckpointError(f"checkpoint {path} is corrupt or not a medrepro checkpoint: "
                              f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path} has no model state; it was not written by medrepro")
    return state


def check_variant(saved: dict[str, Any], variant: str, path: str | Path) -> None:
    """Refuse weights trained for another variant (their vocabularies may well have the same size)."""
    trained = (saved.get("identity") or {}).get("values", {}).get("variant")
    if trained != variant:
        raise CheckpointError(f"{path} holds weights of variant {trained!r}, not {variant!r}: evaluate it with "
                              f"--variant {trained}, or name a checkpoint of {variant!r}")


def step_checkpoints(directory: str | Path) -> list[Path]:
    """Step checkpoints in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_FILE.search(p.name))]
    return [p for _, p in sorted(found)]


def resolve_resume(spec: str, directory: str | Path) -> Path:
    """`latest` → the newest step checkpoint in `directory`; anything else is a path."""
    if spec == "latest":
        found = step_checkpoints(directory)
        if not found:
            raise CheckpointError(f"--resume latest: no step-*.pt checkpoint in {directory}")
        return found[-1]
    return Path(spec)


class CheckpointManager:
    """Writes step checkpoints, prunes all but the last K, and keeps the best by one metric."""

    def __init__(self, directory: str | Path, keep_last: int, metric: str, mode: str):
        if mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max', got {mode!r}")
        self.directory = Path(directory)
        self.keep_last = max(1, keep_last)
        self.metric, self.mode = metric, mode

    def is_better(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value < best if self.mode == "min" else value > best

    def save_step(self, step: int, state: dict[str, Any]) -> Path:
        path = self.directory / f"step-{step:08d}.pt"
        save(path, state)
        for old in step_checkpoints(self.directory)[:-self.keep_last]:
            old.unlink(missing_ok=True)
        return path

    def save_best(self, step_file: Path) -> Path:
        best = self.directory / "best.pt"
        atomic.write_with(best, lambda tmp: shutil.copyfile(step_file, tmp))
        return best
