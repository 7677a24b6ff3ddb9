"""Checks a command makes before any work: its outputs can be written and its inputs exist.

They run after the config is loaded and before torch is imported, so a wrong `--out` or a missing
earlier stage costs about a second instead of a whole evaluation, and nothing the user made is ever
replaced: an existing regular file where a directory goes is refused, never deleted.
"""

import tempfile
from pathlib import Path

from medrepro.errors import ConfigError, DataError


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable(directory: Path, path: Path, flag: str) -> None:
    """New entries can be made in `directory`, or, if it is still to be made, in its nearest existing
    ancestor (`path` and `flag` name the output, for the message). Tried with a nameless temporary file
    rather than judged from permission bits, which say nothing of a read-only filesystem and everything
    is allowed to root."""
    existing = _nearest_existing(directory)
    if not existing.is_dir():
        raise ConfigError(f"{path} ({flag}): {existing} is a file, not a directory: choose another {flag}")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise ConfigError(f"{path} ({flag}): cannot write in {existing} ({e.strerror}): choose another {flag}, or "
                          "make that directory writable") from None


def output_dir(path: str | Path, flag: str, replaced: bool = False) -> None:
    """A directory the command writes into (or, `replaced`, swaps in as a whole, as a data stage does):
    absent or a directory, and writable where the command writes."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} ({flag}) is a file, not a directory: nothing replaces it; remove it yourself or "
                          f"choose another {flag}")
    # Written into: the directory itself. Made where it is missing, or (replaced) built beside the old one
    # and renamed onto it: its parent.
    _writable(path if path.is_dir() and not replaced else path.parent, path, flag)


def output_file(path: str | Path, flag: str) -> None:
    """A file the command writes: absent or a regular file, in a writable directory (it is written beside
    and renamed onto)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} ({flag}) is a directory, not a file: choose a file name")
    _writable(path.parent, path, flag)


def input_path(path: str | Path, key: str, producer: str) -> None:
    """An earlier stage's output that this one reads; `producer` is the command that writes it."""
    if not Path(path).exists():
        raise DataError(f"{path} ({key}) not found: run `{producer}` first, with the same profile and overrides")
