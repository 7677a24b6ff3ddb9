"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one.

Every result, checkpoint and plot goes through here so that a run killed mid-write leaves nothing
that a later stage could mistake for a good output. The new data is fsynced before the rename and the
directory after it: without the first, a power loss can leave the new name pointing at blocks never
written (a zero-length or zero-filled file); without the second, the rename itself can be lost.

A killed write leaves its temporary beside the target (`.NAME.XXXXXXXX.tmp`, and `.NAME.old` for a
directory being replaced); `clean_orphans` removes them when the next run starts.
"""

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medrepro.errors import ConfigError, OutOfSpaceError


def _umask() -> int:
    """The process umask. Temporary files and directories start at 0600/0700; the final ones get
    the mode `open()` and `mkdir()` would give them, or results would be hidden from the group."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


# The names mkstemp/mkdtemp give temporaries here: a dot, the target's name, 8 random characters.
_TMP_NAME = re.compile(r"^\.(.+)\.[A-Za-z0-9_]{8}\.tmp$")
_OLD_NAME = re.compile(r"^\.(.+)\.old$")


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's data and metadata to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root`, children before their directory."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            _fsync(Path(dirpath, name))
        _fsync(Path(dirpath))


@contextmanager
def _parents(directory: Path) -> Iterator[None]:
    """Make `directory` and its missing ancestors for the block; if the block fails, remove those it made
    (when still empty), so that a failed write leaves no trace."""
    made = []
    missing = directory
    while not missing.exists() and missing != missing.parent:
        made.append(missing)
        missing = missing.parent
    directory.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for made_dir in made:
            try:
                made_dir.rmdir()
            except OSError:
                break
        raise


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    with _parents(path.parent), _replacing(path) as tmp:
        yield tmp


@contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        _fsync(tmp_path)
        os.replace(tmp_path, path)
        _fsync(path.parent)
    except (OSError, RuntimeError) as e:
        size = tmp_path.stat().st_size if tmp_path.exists() else 0
        if _out_of_space(e, path.parent):
            raise OutOfSpaceError(f"no space left on the device holding {path} ({size} bytes written before it "
                                  f"filled, {shutil.disk_usage(path.parent).free} free): free space there or point "
                                  "the config's paths elsewhere") from None
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def _out_of_space(error: BaseException, directory: Path) -> bool:
    """ENOSPC, or a library's own write failure on a full filesystem (torch.save raises a RuntimeError
    such as "basic_ios::clear: iostream error" or "file write failed")."""
    if isinstance(error, OSError):
        return error.errno == errno.ENOSPC
    return shutil.disk_usage(directory).free < 1 << 20


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_with(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Atomically write a file produced by a library call that takes a path (torch.save, savefig)."""
    with atomic_path(path) as tmp:
        writer(tmp)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` only if the block succeeds. A regular file at
    `path` is the user's: refused, never replaced."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} is a file, not a directory: nothing replaces it; remove it yourself or choose "
                          "another path")
    with _parents(path.parent), _replacing_dir(path) as tmp:
        yield tmp


@contextmanager
def _replacing_dir(path: Path) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        _fsync_tree(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            _fsync(path.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
            _fsync(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def clean_orphans(directory: str | Path, name: str | None = None) -> list[Path]:
    """Remove what killed atomic writes left in `directory` (not below it), or only those of the target
    `name`; return what was removed.

    A `.NAME.old` directory whose NAME is missing is the previous version of a directory whose
    replacement was killed between its two renames: it is moved back to NAME rather than deleted.
    Call this only when no other process is writing into `directory` (or into `name` there).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for entry in sorted(directory.iterdir()):
        target_name = (_OLD_NAME.match(entry.name) or _TMP_NAME.match(entry.name))
        if name is not None and (target_name is None or target_name.group(1) != name):
            continue
        old = _OLD_NAME.match(entry.name)
        if old and entry.is_dir() and not entry.is_symlink():
            target = entry.with_name(old.group(1))
            if target.exists():
                shutil.rmtree(entry)
                removed.append(entry)
            else:
                os.replace(entry, target)
        elif _TMP_NAME.match(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    _fsync(directory)
    return removed
