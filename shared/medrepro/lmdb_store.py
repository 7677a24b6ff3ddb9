"""A validated key → pickled-value table stored as one LMDB environment (a directory).

The main database is the RET-CLIP upstream layout: utf-8 string keys, pickled values, and a count key
(e.g. `num_images`) whose value is the record count as ASCII digits. Writing builds the whole table
beside its destination and swaps it in, so a failed build never leaves a half-written table; opening
checks the count against the environment so a truncated copy is caught before training rather than
as a KeyError in a DataLoader worker hours later.

Every record's stored bytes are checked on every `get` against a digest written with it. LMDB itself
has no checksums: a flipped bit in a value page comes back as a silently different image or caption.
The digests live in a named sub-database (`DIGESTS_DB`) of the same environment, not inside the
values, so upstream readers still `get` the same keys and unpickle the same bytes; the only trace in
the main database is one extra key, the sub-database's name, which upstream never reads. A digest is
BLAKE2b over the key and the value bytes, 16 bytes long: in hashlib it is faster than SHA-256 on
CPUs without SHA instructions, covering the key catches a value that moved to another key, and 128
bits is far more than detecting accidental corruption needs (this is not a defence against tampering:
whoever can write the table can write its digests, and values are unpickled anyway). The count key
has no digest: a changed count disagrees with the number of entries, which opening checks.

Corruption below the records (a garbage page, a truncated data.mdb) mostly surfaces as `lmdb.Error`;
every LMDB call goes through `_lmdb_errors`, which turns it into one DataError line saying to rebuild.
A truncated file would instead die with SIGBUS when a page past its end is touched, so opening first
checks the file size against LMDB's last page. One case stays out of reach: LMDB 0.9 trusts the
offsets and sizes inside a page, so garbage in a B-tree page can still make it read past the end of
the file and kill the process with SIGBUS, which no Python code can catch.

Values are unpickled, so a table must come from a trusted source (one this module wrote).
"""

import hashlib
import os
import pickle
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb

from medrepro import atomic
from medrepro.errors import DataError

Validator = Callable[[str, Any], None]

PICKLE_PROTOCOL = 5
BATCH_SIZE = 1000
DEFAULT_MAP_SIZE = 1 << 30
DIGESTS_DB = "medrepro_digests"
DIGEST_SIZE = 16


def record_digest(key: bytes, value: bytes) -> bytes:
    """The digest stored for one record: BLAKE2b-128 over the key's length, the key and the value."""
    digest = hashlib.blake2b(len(key).to_bytes(4, "big"), digest_size=DIGEST_SIZE)
    digest.update(key)
    digest.update(value)
    return digest.digest()


def write_table(
    path: str | Path,
    records: Iterable[tuple[str, Any]],
    count_key: str,
    validate: Validator | None = None,
    map_size: int = DEFAULT_MAP_SIZE,
) -> int:
    """Write `records`, their digests and the count key as a fresh table at `path`; return the record count.

    `validate(key, value)` raises ValueError to reject a record. A rejected record, a duplicate key,
    or a key equal to `count_key` or `DIGESTS_DB` aborts with DataError and leaves any existing table
    untouched. The map grows by doubling whenever it fills, so `map_size` is only a starting point.
    """
    path = Path(path)
    with atomic.atomic_dir(path) as tmp:
        # The only writer, in a fresh directory: no lock file, whose pids and reader slots would
        # make two builds of the same data differ byte for byte.
        env = lmdb.open(str(tmp), map_size=map_size, subdir=True, lock=False, max_dbs=1)
        try:
            digests = env.open_db(DIGESTS_DB.encode("utf-8"))
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
                    _commit(env, digests, batch, path)
                    batch = []
            _commit(env, digests, batch, path, (count_key.encode("utf-8"), str(count).encode("ascii")))
        finally:
            env.close()
    return count


def _check_key(key: str, count_key: str, max_key_size: int, path: Path) -> bytes:
    if not isinstance(key, str) or not key:
        raise DataError(f"invalid key {key!r} for {path}: keys must be non-empty strings; fix the source data")
    if key in (count_key, DIGESTS_DB):
        raise DataError(
            f"record key '{key}' for {path} collides with the count key or the digests database; rename the record"
        )
    key_bytes = key.encode("utf-8")
    if len(key_bytes) > max_key_size:
        raise DataError(
            f"key '{key}' for {path} is {len(key_bytes)} bytes, over LMDB's limit of {max_key_size}; "
            "shorten the ids in the source data"
        )
    return key_bytes


def _commit(
    env: lmdb.Environment,
    digests: Any,
    batch: list[tuple[str, bytes, bytes]],
    path: Path,
    count: tuple[bytes, bytes] | None = None,
) -> None:
    """Put `batch` (and `count`, the count key's item) with its digests in one transaction, doubling the
    map and retrying the whole batch when it fills."""
    while True:
        try:
            with env.begin(write=True) as txn:
                for key, key_bytes, value in batch:
                    if not txn.put(key_bytes, value, overwrite=False):
                        raise DataError(f"duplicate key '{key}' for {path}: keys must be unique; fix the source data")
                    txn.put(key_bytes, record_digest(key_bytes, value), db=digests)
                if count is not None:
                    txn.put(*count)
            return
        except lmdb.MapFullError:
            # The failed transaction was aborted, so the batch can be replayed in a bigger map.
            env.set_mapsize(env.info()["map_size"] * 2)


@contextmanager
def _lmdb_errors(path: Path, hint: str, key: str | None = None) -> Iterator[None]:
    """Turn an LMDB failure (a damaged page, an unreadable file) into one DataError line."""
    try:
        yield
    except lmdb.Error as err:
        where = f"LMDB table {path}" if key is None else f"record '{key}' in LMDB table {path}"
        raise DataError(f"cannot read {where}: {type(err).__name__}: {err}; rebuild with {hint}") from err


# LMDB must not open the same files twice in one process (py-lmdb refuses), yet two datasets may
# well read one table, so every table on the same files shares one read-only handle per process,
# keyed by the data file's (device, inode) and tagged with the pid that opened it; the handle of
# the digests database comes with it.
_handles: dict[tuple[int, int], tuple[int, lmdb.Environment, Any]] = {}


class LmdbTable:
    """Read-only access to a table written by `write_table`, safe in DataLoader worker processes.

    No LMDB handle lives on the object: it is looked up per process and opened on first use there, so
    the table pickles for spawned workers and reopens in forked ones; `validate` must then be
    picklable too (a module-level function). `hint` names the command that builds the table and is
    repeated in every error message. `verify=False` skips the digest check; it exists only so the
    benchmark can measure what the check costs.
    """

    def __init__(
        self,
        path: str | Path,
        count_key: str,
        validate: Validator | None = None,
        hint: str = "the experiment's data preparation step",
        verify: bool = True,
    ) -> None:
        self.path = Path(path)
        self.count_key = count_key
        self.validate = validate
        self.hint = hint
        self.verify = verify
        try:
            stat = (self.path / "data.mdb").stat()
        except FileNotFoundError:
            raise DataError(f"LMDB table {self.path} not found: build it with {hint}") from None
        self._file_id = (stat.st_dev, stat.st_ino)
        self._count = self._read_count()

    def _read_count(self) -> int:
        env, digests = self._environment()
        with _lmdb_errors(self.path, self.hint), env.begin() as txn:
            raw = txn.get(self.count_key.encode("utf-8"))
            entries = env.stat()["entries"]
            digest_entries = txn.stat(digests)["entries"]
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
        # The main database holds the records, the count key and the digests database's name.
        if entries != count + 2:
            raise DataError(
                f"LMDB table {self.path} is truncated or has extra records: '{self.count_key}' says "
                f"{count} but it holds {entries - 2}; rebuild with {self.hint}"
            )
        if digest_entries != count:
            raise DataError(
                f"LMDB table {self.path} has {digest_entries} digests for {count} records; rebuild with {self.hint}"
            )
        return count

    def _environment(self) -> tuple[lmdb.Environment, Any]:
        pid = os.getpid()
        entry = _handles.get(self._file_id)
        if entry is not None and entry[0] == pid:
            return entry[1], entry[2]
        if entry is not None:
            # Inherited through fork: an LMDB handle must not be used across fork, and py-lmdb
            # counts the files as open until this process closes its copy.
            entry[1].close()
            del _handles[self._file_id]
        # readahead=False: access is random by key, and OS readahead would only evict useful pages.
        with _lmdb_errors(self.path, self.hint):
            env = lmdb.open(str(self.path), readonly=True, lock=False, readahead=False, subdir=True, max_dbs=1)
        try:
            self._check_size(env)
            with _lmdb_errors(self.path, self.hint):
                try:
                    digests = env.open_db(DIGESTS_DB.encode("utf-8"), create=False)
                except lmdb.NotFoundError:
                    raise DataError(
                        f"LMDB table {self.path} has no record digests (built by an older version); "
                        f"rebuild with {self.hint}"
                    ) from None
        except BaseException:
            env.close()
            raise
        _handles[self._file_id] = (pid, env, digests)
        return env, digests

    def _check_size(self, env: lmdb.Environment) -> None:
        # Pages are memory-mapped: touching one past the end of a truncated file kills the process
        # with SIGBUS instead of raising, so compare the file with the last page LMDB will use.
        with _lmdb_errors(self.path, self.hint):
            needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        size = (self.path / "data.mdb").stat().st_size
        if size < needed:
            raise DataError(
                f"LMDB table {self.path} is truncated: data.mdb has {size} bytes, its pages need {needed}; "
                f"rebuild with {self.hint}"
            )

    def __len__(self) -> int:
        return self._count

    def keys(self) -> Iterator[str]:
        """Record keys in LMDB order (bytewise sorted), without the count key or the digests database."""
        skip = {self.count_key.encode("utf-8"), DIGESTS_DB.encode("utf-8")}
        env, _ = self._environment()
        with _lmdb_errors(self.path, self.hint), env.begin() as txn:
            for key in txn.cursor().iternext(keys=True, values=False):
                if key not in skip:
                    yield key.decode("utf-8")

    def get(self, key: str) -> Any:
        raw = digest = None
        if key != self.count_key and key != DIGESTS_DB:
            env, digests = self._environment()
            key_bytes = key.encode("utf-8")
            with _lmdb_errors(self.path, self.hint, key), env.begin() as txn:
                raw = txn.get(key_bytes)
                digest = txn.get(key_bytes, db=digests)
        if raw is None and digest is not None:
            raise DataError(
                f"corrupt LMDB table {self.path}: record '{key}' has a digest but no value; rebuild with {self.hint}"
            )
        if raw is None:
            raise DataError(f"no record '{key}' in {self.path}; check the id or rebuild with {self.hint}")
        if self.verify and digest != record_digest(key_bytes, raw):
            raise DataError(
                f"corrupt record '{key}' in {self.path}: its bytes do not match the digest written with them; "
                f"rebuild with {self.hint}"
            )
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
