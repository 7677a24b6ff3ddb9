"""What a run directory guarantees: one writer at a time, and checkpoints that belong to its config
(its layout and completion mark are `medrepro.rundir`'s).

    .lock           held (flock) by the process writing the directory; the pid is inside, for messages

Outputs that a command replaces as a whole (a data stage's directory, a results directory) are locked
through a file in the machine's temporary directory instead, so nothing is left in the project.

The lock is an advisory `flock` on an open file: the kernel releases it when the holder exits, however
it exits, so a lock left by a killed run is simply taken over; no pid guessing is needed.

The identity of a run is its resolved config without the settings that do not change what is
learned (paths, threads, logging, checkpoint cadence, evaluation batch size...), plus the variant
and the checksums of the data it reads. Every checkpoint carries it; resuming with another identity
is refused unless `train.allow_config_change` says the change is deliberate.
"""

import dataclasses
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medrepro.config import flatten, to_plain
from medrepro.errors import CheckpointError, ConfigError, RunError

LOCK_FILE = ".lock"
# Settings that change how a run is executed or recorded, not what it learns: whole sections, fields of
# the training section wherever it sits, and a few keys of experiments' own sections.
NOT_IDENTITY_SECTIONS = {"paths", "runtime", "tracking", "health"}
NOT_IDENTITY_FIELDS = {"log_every_steps", "num_workers", "save_every_steps", "keep_last", "allow_config_change",
                       "nonfinite_patience"}
NOT_IDENTITY_KEYS = {"eval.batch_size", "eval.bootstrap", "index.batch_size", "index.gpu"}


@contextmanager
def exclusive(directory: str | Path, what: str = "run directory") -> Iterator[Path]:
    """Hold the lock of `directory` (created if need be) for the block; a second holder gets one line.

    A block that fails before writing anything else there (a refused command: an input missing, nothing
    to resume) takes away what taking the lock made, the lock file and the directories made for it, so
    that it leaves nothing behind. A run that wrote something keeps it, for `--resume`."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} is a file, not a {what}: remove it or choose another directory")
    made = [d for d in (directory, *directory.parents) if not d.exists()]  # deepest first
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / LOCK_FILE
    made_lock = not lock.exists()
    with _held(lock, directory, what):
        try:
            yield directory
        except BaseException:
            if made_lock and [p.name for p in directory.iterdir()] == [LOCK_FILE]:
                lock.unlink()  # still held: no other process can have taken it meanwhile
                for d in made:
                    if any(d.iterdir()):  # another process wrote there meanwhile
                        break
                    d.rmdir()
            raise


@contextmanager
def exclusive_output(path: str | Path) -> Iterator[Path]:
    """Hold the lock of an output a command replaces as a whole (a data stage's directory, a results
    directory). The lock file lives in the machine's temporary directory, named by the output's
    absolute path, so a command that fails before writing leaves nothing behind in the project."""
    path = Path(path)
    locks = Path(tempfile.gettempdir()) / "medrepro-locks"
    locks.mkdir(exist_ok=True)
    name = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:20]
    with _held(locks / f"{name}.lock", path, "output directory"):
        yield path


def _acquire(handle, directory: Path, what: str) -> None:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        raise RunError(f"{directory} is in use by {holder}: wait for it to finish, or choose another "
                       f"{what}") from None


@contextmanager
def _held(lock_file: Path, directory: Path, what: str) -> Iterator[None]:
    with open(lock_file, "a+") as handle:
        _acquire(handle, directory, what)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_free(directory: str | Path, what: str = "run directory") -> None:
    """Refuse at once a directory whose lock another process holds. A training takes the lock itself only
    after building its model and data, seconds later; this check runs before torch is imported."""
    lock = Path(directory) / LOCK_FILE
    if lock.is_file():
        with open(lock) as handle:
            _acquire(handle, Path(directory), what)


def identity(run_config: Any, variant: str, data_checksums: Mapping[str, str]) -> dict[str, Any]:
    """{"values": flat settings that define the run, "hash": their SHA-256}."""
    plain = to_plain(run_config) if dataclasses.is_dataclass(run_config) else run_config
    values = {k: v for k, v in flatten(plain).items() if _defines_the_run(k)}
    values["variant"] = variant
    values.update({f"data:{path}": digest for path, digest in sorted(data_checksums.items())})
    text = json.dumps(values, sort_keys=True, default=str)
    return {"values": values, "hash": hashlib.sha256(text.encode()).hexdigest()}


def _defines_the_run(key: str) -> bool:
    parts = key.split(".")
    return not (NOT_IDENTITY_SECTIONS & set(parts[:-1]) or parts[-1] in NOT_IDENTITY_FIELDS
                or key in NOT_IDENTITY_KEYS)


def differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """`key: saved → current` for every setting that differs."""
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k, '(unset)')} → {current.get(k, '(unset)')}" for k in keys
            if saved.get(k) != current.get(k)]


def check_resume(saved: Mapping[str, Any] | None, current: Mapping[str, Any], checkpoint: Path,
                 allow_change: bool, allow_key: str | None) -> list[str]:
    """Refuse to resume `checkpoint` under another identity unless allowed; returns the changes.
    `allow_key` is the config key that allows it for this command (None: nothing does)."""
    deliberate = f", or pass {allow_key}=true if the change is deliberate" if allow_key else ""
    if saved is None:
        raise CheckpointError(f"{checkpoint} records no run identity (written by an older medrepro): start a new "
                              f"run in another directory{deliberate}")
    changed = differences(saved["values"], current["values"])
    if changed and not allow_change:
        shown = "; ".join(changed[:4]) + (f"; and {len(changed) - 4} more" if len(changed) > 4 else "")
        raise CheckpointError(f"{checkpoint} belongs to another config ({shown}): resume with the config it was "
                              f"trained with, or start a new run in another directory{deliberate}")
    return changed
