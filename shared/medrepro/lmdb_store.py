"""A validated key → pickled-value table stored as one LMDB environment (a directory).

This is the RET-CLIP upstream layout: utf-8 string keys, pickled values, and a count key (e.g.
`num_images`) whose value is the record count as ASCII digits. Writing builds the whole table beside
its destination and swaps it in, so a failed build never leaves a half-written table; opening checks
the count against the environment so a truncated copy is caught before training rather than as a
KeyError in a DataLoader worker hours later.

Values are unpickled, so a table must come from a trusted source (one this module wrote).
"""

import os
import pickle
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import lmdb

from medrepro import atomic
from medrepro.errors import DataError

Validator = Callable[[str, Any], None]

PICKLE_PROTOCOL = 5
BATCH_SIZE = 1000
DEFAULT_MAP_SIZE = 1 << 30


def write_table(
    path: str | Path,
    records: Iterable[tuple[str, Any]],
    count_key: str,
    validate: Validator | None = None,
    map_size: int = DEFAULT_MAP_SIZE,
) -> int:
    """Write `records` and the count key as a fresh table at `path`; return the record count.

    `validate(key, value)` raises ValueError to reject a record. A rejected record, a duplicate key,
    or a key equal to `count_key` aborts with DataError and leaves any existing table untouched. The
    map grows by doubling whenever it fills, so `map_size` is only a starting point.
    """
    path = Path(path)
    with atomic.atomic_dir(path) as tmp:
        # The only writer, in a fresh directory: no lock file, whose pids and reader slots would
        # make two builds of the same data differ byte for byte.
        env = lmdb.open(str(tmp), map_size=map_size, subdir=True, lock=False)
        try:
            count = 0
            batch: list[tuple[str, bytes, bytes]] = []
            for key, value in records:
                key_bytes = _check_key(key, count_key, env.max_key_size(), path)
                if validate is not None:
                    try:
                        validate(key, value)
                    except ValueError as err:
                        raise DataError(
                            f"invalid record '{key}' for {path}: {err}; fix the source data and rebuild"
                        ) from err
                batch.append((key, key_bytes, pickle.dumps(value, protocol=PICKLE_PROTOCOL)))
                count += 1
                if len(batch) == BATCH_SIZE:
                    _commit(env, batch, path)
                    batch = []
            batch.append((count_key, count_key.encode("utf-8"), str(count).encode("ascii")))
            _commit(env, batch, path)
        finally:
            env.close()
    return count


def _check_key(key: str, count_key: str, max_key_size: int, path: Path) -> bytes:
    if not isinstance(key, str) or not key:
        raise DataError(f"invalid key {key!r} for {path}: keys must be non-empty strings; fix the source data")
    if key == count_key:
        raise DataError(
            f"record key '{key}' for {path} collides with the count key; rename the record or the count key"
        )
    key_bytes = key.encode("utf-8")
    if len(key_bytes) > max_key_size:
        raise DataError(
            f"key '{key}' for {path} is {len(key_bytes)} bytes, over LMDB's limit of {max_key_size}; "
            "shorten the ids in the source data"
        )
    return key_bytes


def _commit(env: lmdb.Environment, batch: list[tuple[str, bytes, bytes]], path: Path) -> None:
    """Put `batch` in one transaction, doubling the map and retrying the whole batch when it fills."""
    while True:
        try:
            with env.begin(write=True) as txn:
                for key, key_bytes, value in batch:
                    if not txn.put(key_bytes, value, overwrite=False):
                        raise DataError(f"duplicate key '{key}' for {path}: keys must be unique; fix the source data")
            return
        except lmdb.MapFullError:
            # The failed transaction was aborted, so the batch can be replayed in a bigger map.
            env.set_mapsize(env.info()["map_size"] * 2)


# LMDB must not open the same files twice in one process (py-lmdb refuses), yet two datasets may
# well read one table, so every table on the same files shares one read-only handle per process,
# keyed by the data file's (device, inode) and tagged with the pid that opened it.
_handles: dict[tuple[int, int], tuple[int, lmdb.Environment]] = {}


class LmdbTable:
    """Read-only access to a table written by `write_table`, safe in DataLoader worker processes.

    No LMDB handle lives on the object: it is looked up per process and opened on first use there, so
    the table pickles for spawned workers and reopens in forked ones; `validate` must then be
    picklable too (a module-level function). `hint` names the command that builds the table and is
    repeated in every error message.
    """

    def __init__(
        self,
        path: str | Path,
        count_key: str,
        validate: Validator | None = None,
        hint: str = "the experiment's data preparation step",
    ) -> None:
        self.path = Path(path)
        self.count_key = count_key
        self.validate = validate
        self.hint = hint
        try:
            stat = (self.path / "data.mdb").stat()
        except FileNotFoundError:
            raise DataError(f"LMDB table {self.path} not found: build it with {hint}") from None
        self._file_id = (stat.st_dev, stat.st_ino)
        self._count = self._read_count()

    def _read_count(self) -> int:
        env = self._environment()
        with env.begin() as txn:
            raw = txn.get(self.count_key.encode("utf-8"))
        if raw is None:
            raise DataError(
                f"LMDB table {self.path} has no count key '{self.count_key}'; rebuild with {self.hint}"
            )
        text = raw.decode("ascii", errors="replace")
        if not text.isdigit():
            raise DataError(
                f"count key '{self.count_key}' in {self.path} is {text!r}, not an integer; "
                f"rebuild with {self.hint}"
            )
        count = int(text)
        entries = env.stat()["entries"]
        if entries != count + 1:
            raise DataError(
                f"LMDB table {self.path} is truncated or has extra records: '{self.count_key}' says "
                f"{count} but it holds {entries - 1}; rebuild with {self.hint}"
            )
        return count

    def _environment(self) -> lmdb.Environment:
        pid = os.getpid()
        entry = _handles.get(self._file_id)
        if entry is not None and entry[0] == pid:
            return entry[1]
        if entry is not None:
            # Inherited through fork: an LMDB handle must not be used across fork, and py-lmdb
            # counts the files as open until this process closes its copy.
            entry[1].close()
        try:
            # readahead=False: access is random by key, and OS readahead would only evict useful pages.
            env = lmdb.open(str(self.path), readonly=True, lock=False, readahead=False, subdir=True)
        except lmdb.Error as err:
            raise DataError(f"cannot open LMDB table {self.path}: {err}; rebuild with {self.hint}") from err
        _handles[self._file_id] = (pid, env)
        return env

    def __len__(self) -> int:
        return self._count

    def keys(self) -> Iterator[str]:
        """Record keys in LMDB order (bytewise sorted), without the count key."""
        count_key = self.count_key.encode("utf-8")
        with self._environment().begin() as txn:
            for key in txn.cursor().iternext(keys=True, values=False):
                if key != count_key:
                    yield key.decode("utf-8")

    def get(self, key: str) -> Any:
        raw = None
        if key != self.count_key:
            with self._environment().begin() as txn:
                raw = txn.get(key.encode("utf-8"))
        if raw is None:
            raise DataError(f"no record '{key}' in {self.path}; check the id or rebuild with {self.hint}")
        try:
            value = pickle.loads(raw)
        # Garbage bytes can fail to unpickle in many ways (UnpicklingError, EOFError, KeyError, ...).
        except Exception as err:
            raise self._corrupt(key, err) from err
        if self.validate is not None:
            try:
                self.validate(key, value)
            except ValueError as err:
                raise self._corrupt(key, err) from err
        return value

    def _corrupt(self, key: str, err: Exception) -> DataError:
        return DataError(
            f"corrupt record '{key}' in {self.path}: {type(err).__name__}: {err}; rebuild with {self.hint}"
        )

    def close(self) -> None:
        """Close this process's handle on the table's files; tables sharing it reopen on next use."""
        entry = _handles.get(self._file_id)
        if entry is not None and entry[0] == os.getpid():
            del _handles[self._file_id]
            entry[1].close()
