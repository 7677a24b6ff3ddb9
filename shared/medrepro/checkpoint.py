"""Checkpoints: atomic, verified, full training state, the last K plus the best by a named metric.

Layout inside a run directory:
    checkpoints/step-00000120.pt          the last `keep_last` states, by optimizer step
    checkpoints/step-00000120.pt.sha256   its SHA-256, in `sha256sum` format
    checkpoints/best.pt(.sha256)          the state with the best value of the tracked metric
Each file holds the model, optimizer, scheduler and grad-scaler states, every process's RNG states,
and the training position (step, epoch, step within the epoch), so a resumed run continues with the
exact batch, learning rate and random draws the interrupted one would have used next.

Integrity: `torch.save` streams the state through a writer that hashes every byte on its way to the
file, so the digest costs neither a second copy of the state in memory nor a second pass over it.
The digest goes into a sidecar file rather than into the checkpoint because it is known only once
the last byte is written, and a zip archive cannot carry its own hash. The sidecar is renamed into
place before the checkpoint: a checkpoint that exists always has its digest, and a write killed
between the two renames leaves the old file with a digest it does not match, which is refused, never
trusted. `load` hashes the file before unpickling anything (one streaming read); a bit flip, a
truncated or empty file, or a missing digest is a `CheckpointError` naming the file, and
`resolve_resume("latest", ...)` falls back to the newest step checkpoint that verifies.
"""

import hashlib
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from medrepro import atomic
from medrepro.errors import CheckpointError

_STEP_FILE = re.compile(r"step-(\d+)\.pt$")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class _HashingWriter:
    """The write-only stream `torch.save` writes into: each chunk is hashed, then written."""

    def __init__(self, file: Any):
        self.file = file
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def digest_path(path: str | Path) -> Path:
    """The sidecar holding `path`'s SHA-256."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def _write_digest(path: Path, hexdigest: str) -> None:
    # `sha256sum -c` format, so the files can also be checked without medrepro.
    atomic.write_text(digest_path(path), f"{hexdigest}  {path.name}\n")


def _read_digest(path: Path) -> str:
    sidecar = digest_path(path)
    if not sidecar.is_file():
        raise CheckpointError(f"checkpoint {path} has no digest file {sidecar.name} (its write did not finish, "
                              "or it predates digests): use an earlier checkpoint, or if you trust this file, run "
                              f"`sha256sum {path.name} > {sidecar.name}` in {path.parent}")
    fields = sidecar.read_text(encoding="utf-8", errors="replace").split()
    if not fields or not _SHA256.fullmatch(fields[0]):
        raise CheckpointError(f"digest file {sidecar} does not hold a SHA-256: delete {path.name} and its digest, "
                              "and use an earlier checkpoint")
    return fields[0]


def save(path: str | Path, state: dict[str, Any]) -> None:
    path = Path(path)
    with atomic.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            writer = _HashingWriter(f)
            torch.save(state, writer)
        _write_digest(path, writer.sha256.hexdigest())


def verify(path: str | Path) -> None:
    """Raise `CheckpointError` unless `path` exists and matches its recorded SHA-256."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes), its write was cut off: use an earlier "
                              "checkpoint (--resume latest skips it)")
    expected = _read_digest(path)
    with open(path, "rb") as f:
        actual = hashlib.file_digest(f, "sha256").hexdigest()
    if actual != expected:
        raise CheckpointError(f"checkpoint {path} does not match its SHA-256 in {digest_path(path).name}: it is "
                              "corrupt or truncated; use an earlier checkpoint (--resume latest skips it)")


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    verify(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a foreign file
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


def _verifies(path: Path) -> bool:
    try:
        verify(path)
    except CheckpointError:
        return False
    return True


def step_checkpoints(directory: str | Path) -> list[Path]:
    """Step checkpoints in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_FILE.search(p.name))]
    return [p for _, p in sorted(found)]


def resolve_resume(spec: str, directory: str | Path) -> Path:
    """`latest` → the newest step checkpoint in `directory` that verifies, saying on stderr why each newer
    one was skipped; anything else is a path, which must verify."""
    if spec != "latest":
        path = Path(spec)
        verify(path)
        return path
    found = step_checkpoints(directory)
    if not found:
        raise CheckpointError(f"--resume latest: no step-*.pt checkpoint in {directory}")
    for path in reversed(found):
        try:
            verify(path)
        except CheckpointError as e:
            print(f"--resume latest: skipping {path.name}: {e}", file=sys.stderr, flush=True)
            continue
        return path
    raise CheckpointError(f"--resume latest: none of the {len(found)} step checkpoints in {directory} verifies "
                          "(reasons above): train again into a new output directory")


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

    def step_path(self, step: int) -> Path:
        return self.directory / f"step-{step:08d}.pt"

    def save_step(self, step: int, state: dict[str, Any]) -> Path:
        path = self.step_path(step)
        save(path, state)
        self._prune()
        return path

    def _prune(self) -> None:
        """Delete all but the last K step checkpoints, unless none of those verifies: then the newest
        older one that does is kept too, so a run always has a state to resume from."""
        found = step_checkpoints(self.directory)
        keep, older = found[-self.keep_last:], found[:-self.keep_last]
        # Newest first: normally the file just written verifies and the search ends there.
        if not any(_verifies(p) for p in reversed(keep)):
            fallback = next((p for p in reversed(older) if _verifies(p)), None)
            if fallback is not None:
                keep.append(fallback)
        for old in older:
            if old not in keep:
                old.unlink(missing_ok=True)
                digest_path(old).unlink(missing_ok=True)

    def save_best(self, step_file: Path, best: Path) -> Path:
        """Copy `step_file` to `best` (the run's best.pt), with its digest: a bad copy is caught when it is
        loaded."""
        with atomic.atomic_path(best) as tmp:
            shutil.copyfile(step_file, tmp)
            _write_digest(best, _read_digest(step_file))
        return best
