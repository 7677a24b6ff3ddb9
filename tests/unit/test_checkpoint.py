"""Checkpoints (round trip, corruption, pruning, resume) and atomic writes."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medrepro import atomic, checkpoint
from medrepro.checkpoint import CheckpointManager, resolve_resume, step_checkpoints
from medrepro.errors import CheckpointError


def payload(step: int = 0) -> dict:
    return {"model": {"w": torch.full((2, 3), float(step)), "b": torch.arange(3)},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
            "train_state": {"step": step, "best_value": None}}


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def with_digests(*files: str) -> list[str]:
    return sorted([*files, *(f"{f}.sha256" for f in files)])


def weight_offset(path: Path, step: int) -> int:
    """Where the bytes of the checkpoint's model.w tensor start in the file."""
    offset = path.read_bytes().find(torch.full((2, 3), float(step)).numpy().tobytes())
    assert offset > 0
    return offset


def flip_bit(path: Path, step: int) -> None:
    data = bytearray(path.read_bytes())
    data[weight_offset(path, step) + 3] ^= 0x01
    path.write_bytes(data)


def overwrite_64_bytes(path: Path, step: int) -> None:
    data = bytearray(path.read_bytes())
    start = weight_offset(path, step) - 40
    data[start:start + 64] = os.urandom(64)
    path.write_bytes(data)


def empty(path: Path, step: int) -> None:
    path.write_bytes(b"")


def truncate(path: Path, step: int) -> None:
    path.write_bytes(path.read_bytes()[:weight_offset(path, step)])


CORRUPTIONS = [flip_bit, overwrite_64_bytes, empty, truncate]


# ----------------------------------------------------------------------------------- save and load


def test_round_trip(tmp_path):
    path = tmp_path / "sub" / "ckpt.pt"
    checkpoint.save(path, payload(7))
    loaded = checkpoint.load(path)
    assert torch.equal(loaded["model"]["w"], torch.full((2, 3), 7.0))
    assert torch.equal(loaded["model"]["b"], torch.arange(3))
    assert loaded["train_state"] == {"step": 7, "best_value": None}
    assert loaded["optimizer"] == {"state": {}, "param_groups": [{"lr": 0.1}]}
    assert names(path.parent) == ["ckpt.pt", "ckpt.pt.sha256"]  # no temp file left
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert (path.parent / "ckpt.pt.sha256").read_text() == f"{digest}  ckpt.pt\n", "sha256sum -c format"


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "nope.pt")


def test_truncated_file_names_the_path(tmp_path):
    path = tmp_path / "ckpt.pt"
    checkpoint.save(path, payload(1))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_file_without_digest_is_refused(tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match=r"no digest file ckpt\.pt\.sha256") as info:
        checkpoint.load(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", ["", "not-a-digest  ckpt.pt\n"])
def test_malformed_digest_is_refused(tmp_path, content):
    path = tmp_path / "ckpt.pt"
    checkpoint.save(path, payload(1))
    (tmp_path / "ckpt.pt.sha256").write_text(content)
    with pytest.raises(CheckpointError, match="does not hold a SHA-256"):
        checkpoint.load(path)


@pytest.mark.parametrize("corrupt", CORRUPTIONS)
def test_corrupt_checkpoint_is_refused_in_one_line(tmp_path, corrupt):
    path = tmp_path / "step-00000002.pt"
    checkpoint.save(path, payload(2))
    corrupt(path, 2)
    if corrupt in (flip_bit, overwrite_64_bytes):
        # The failure without digests: torch loads the damaged tensor as if nothing happened.
        damaged = torch.load(path, weights_only=True)["model"]["w"]
        assert not torch.equal(damaged, torch.full((2, 3), 2.0))
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message and "earlier checkpoint" in message
    assert ("empty (0 bytes)" if corrupt is empty else "does not match its SHA-256") in message


@pytest.mark.parametrize("state", [{"weights": torch.zeros(2)}, torch.zeros(2), [1, 2]])
def test_file_without_model_state(tmp_path, state):
    path = tmp_path / "ckpt.pt"
    checkpoint.save(path, state)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path)
    assert str(path) in str(info.value)


def test_load_refuses_arbitrary_pickles(tmp_path):
    """weights_only loading: a checkpoint must not be able to run code or restore arbitrary objects."""
    path = tmp_path / "ckpt.pt"
    checkpoint.save(path, {"model": {}, "obj": Path("/x")})
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path)
    assert str(path) in str(info.value)


# ------------------------------------------------------------------------------------------ manager


def test_manager_keeps_last_k_and_best_survives(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2, metric="val/loss", mode="min")
    for step in range(1, 6):
        path = manager.save_step(step, payload(step))
        assert path == tmp_path / f"step-{step:08d}.pt"
        if step == 2:
            manager.save_best(path, tmp_path / "best.pt")
    assert names(tmp_path) == with_digests("best.pt", "step-00000004.pt", "step-00000005.pt")
    assert torch.equal(checkpoint.load(tmp_path / "best.pt")["model"]["w"], torch.full((2, 3), 2.0))
    assert torch.equal(checkpoint.load(tmp_path / "step-00000005.pt")["model"]["w"], torch.full((2, 3), 5.0))


def test_best_copies_the_digest_and_is_verified(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2, metric="val/loss", mode="min")
    best = manager.save_best(manager.save_step(3, payload(3)), tmp_path / "best.pt")
    digest = hashlib.sha256(best.read_bytes()).hexdigest()
    assert (tmp_path / "best.pt.sha256").read_text() == f"{digest}  best.pt\n"
    assert (tmp_path / "step-00000003.pt.sha256").read_text().split()[0] == digest
    flip_bit(best, 3)
    with pytest.raises(CheckpointError, match=r"best\.pt does not match its SHA-256"):
        checkpoint.load(best)


def test_manager_prunes_by_step_number_not_name(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2, metric="m", mode="max")
    for step in (9, 10, 11):
        manager.save_step(step, payload(step))
    assert names(tmp_path) == with_digests("step-00000010.pt", "step-00000011.pt")


def test_manager_keep_last_at_least_one(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=0, metric="m", mode="min")
    manager.save_step(1, payload(1))
    manager.save_step(2, payload(2))
    assert names(tmp_path) == with_digests("step-00000002.pt")


def test_pruning_keeps_the_last_good_checkpoint_when_the_newest_are_corrupt(tmp_path, monkeypatch):
    """A storage fault spoils every new write: the last K are all bad, so the newest good one stays."""
    manager = CheckpointManager(tmp_path, keep_last=2, metric="m", mode="min")
    manager.save_step(1, payload(1))
    manager.save_step(2, payload(2))
    good_save = checkpoint.save

    def faulty_save(path, state):
        good_save(path, state)
        flip_bit(Path(path), state["train_state"]["step"])

    monkeypatch.setattr(checkpoint, "save", faulty_save)
    for step in (3, 4, 5):
        manager.save_step(step, payload(step))
    assert names(tmp_path) == with_digests("step-00000002.pt", "step-00000004.pt", "step-00000005.pt")
    assert resolve_resume("latest", tmp_path).name == "step-00000002.pt"

    monkeypatch.setattr(checkpoint, "save", good_save)
    manager.save_step(6, payload(6))
    assert names(tmp_path) == with_digests("step-00000005.pt", "step-00000006.pt"), "a good one is back"


def test_is_better():
    low = CheckpointManager("unused", 1, "val/loss", "min")
    high = CheckpointManager("unused", 1, "val/auc", "max")
    assert low.is_better(1.0, None) and high.is_better(1.0, None)
    assert low.is_better(0.5, 1.0) and not low.is_better(1.5, 1.0) and not low.is_better(1.0, 1.0)
    assert high.is_better(1.5, 1.0) and not high.is_better(0.5, 1.0) and not high.is_better(1.0, 1.0)


def test_manager_rejects_unknown_mode():
    with pytest.raises(ValueError, match="best_mode"):
        CheckpointManager("unused", 1, "m", "maximum")


# ------------------------------------------------------------------------------------------ resume


def test_resolve_latest_picks_highest_step(tmp_path, capsys):
    for step in (2, 9, 10):
        checkpoint.save(tmp_path / f"step-{step:08d}.pt", payload(step))
    for name in ("best.pt", ".step-00000011.pt.abc123.tmp", "step-00000012.pt.old"):
        (tmp_path / name).write_bytes(b"")
    assert resolve_resume("latest", tmp_path) == tmp_path / "step-00000010.pt"
    assert [p.name for p in step_checkpoints(tmp_path)] == ["step-00000002.pt", "step-00000009.pt",
                                                            "step-00000010.pt"]
    assert capsys.readouterr().err == ""


def test_resolve_latest_orders_numerically_past_eight_digits(tmp_path):
    checkpoint.save(tmp_path / "step-99999999.pt", payload(1))
    checkpoint.save(tmp_path / "step-100000000.pt", payload(2))
    assert resolve_resume("latest", tmp_path).name == "step-100000000.pt"


@pytest.mark.parametrize("corrupt", CORRUPTIONS)
def test_resolve_latest_falls_back_past_corrupt_checkpoints(tmp_path, capsys, corrupt):
    for step in (1, 2, 3):
        checkpoint.save(tmp_path / f"step-{step:08d}.pt", payload(step))
    corrupt(tmp_path / "step-00000003.pt", 3)
    assert resolve_resume("latest", tmp_path) == tmp_path / "step-00000002.pt"
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("--resume latest: skipping step-00000003.pt: checkpoint ")


def test_resolve_latest_skips_a_checkpoint_without_digest(tmp_path, capsys):
    """A checkpoint from before digests, or whose digest was deleted, is skipped rather than trusted."""
    for step in (1, 2):
        checkpoint.save(tmp_path / f"step-{step:08d}.pt", payload(step))
    (tmp_path / "step-00000002.pt.sha256").unlink()
    assert resolve_resume("latest", tmp_path).name == "step-00000001.pt"
    assert "skipping step-00000002.pt: checkpoint" in capsys.readouterr().err


def test_resolve_latest_when_nothing_verifies(tmp_path, capsys):
    for step in (1, 2):
        checkpoint.save(tmp_path / f"step-{step:08d}.pt", payload(step))
        flip_bit(tmp_path / f"step-{step:08d}.pt", step)
    with pytest.raises(CheckpointError, match=r"none of the 2 step checkpoints .* verifies") as info:
        resolve_resume("latest", tmp_path)
    assert "\n" not in str(info.value)
    assert len(capsys.readouterr().err.splitlines()) == 2


@pytest.mark.parametrize("make_dir", [True, False])
def test_resolve_latest_without_checkpoints(tmp_path, make_dir):
    directory = tmp_path / "checkpoints"
    if make_dir:
        directory.mkdir()
        (directory / "best.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no step"):
        resolve_resume("latest", directory)


def test_resolve_explicit_path(tmp_path):
    checkpoint.save(tmp_path / "x.pt", payload(1))
    assert resolve_resume(str(tmp_path / "x.pt"), tmp_path / "other") == tmp_path / "x.pt"


def test_resolve_explicit_path_must_verify(tmp_path):
    path = tmp_path / "step-00000001.pt"
    checkpoint.save(path, payload(1))
    checkpoint.save(tmp_path / "step-00000002.pt", payload(2))
    flip_bit(path, 1)
    with pytest.raises(CheckpointError, match="does not match its SHA-256"):
        resolve_resume(str(path), tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        resolve_resume(str(tmp_path / "missing.pt"), tmp_path)


# ------------------------------------------------------------------------------------------- atomic


def test_write_json_failure_keeps_old_file_and_no_temp(tmp_path):
    path = tmp_path / "metrics.json"
    atomic.write_json(path, {"auc": 0.5})
    before = path.read_bytes()
    with pytest.raises(ValueError):
        atomic.write_json(path, {"auc": float("nan")})
    assert path.read_bytes() == before
    assert names(tmp_path) == ["metrics.json"]


def test_write_json_content(tmp_path):
    path = tmp_path / "a" / "b.json"
    atomic.write_json(path, {"b": 1, "a": [1.5, None]})
    assert json.loads(path.read_text()) == {"a": [1.5, None], "b": 1}
    assert path.read_text().endswith("\n") and path.read_text().index('"a"') < path.read_text().index('"b"')


def test_write_with_failing_writer_keeps_old_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"old")

    def writer(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic.write_with(path, writer)
    assert path.read_bytes() == b"old"
    assert names(tmp_path) == ["model.pt"]


def test_write_text_replaces(tmp_path):
    path = tmp_path / "x.txt"
    atomic.write_text(path, "one")
    atomic.write_text(path, "two ✓")
    assert path.read_text(encoding="utf-8") == "two ✓"
    assert names(tmp_path) == ["x.txt"]


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "table"
    target.mkdir()
    (target / "old.txt").write_text("old")

    with pytest.raises(RuntimeError), atomic.atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("half")
        raise RuntimeError("build failed")
    assert names(target) == ["old.txt"]
    assert names(tmp_path) == ["table"]

    with atomic.atomic_dir(target) as tmp:
        assert tmp != target
        (tmp / "new.txt").write_text("new")
    assert names(target) == ["new.txt"]
    assert names(tmp_path) == ["table"]


def test_atomic_dir_creates_new_directory(tmp_path):
    target = tmp_path / "a" / "table"
    with atomic.atomic_dir(target) as tmp:
        (tmp / "f").write_text("x")
    assert (target / "f").read_text() == "x"
    assert names(target.parent) == ["table"]


def test_atomic_dir_failure_on_new_path_leaves_nothing(tmp_path):
    target = tmp_path / "table"
    with pytest.raises(RuntimeError), atomic.atomic_dir(target):
        raise RuntimeError
    assert names(tmp_path) == []


def test_atomic_outputs_get_the_usual_permissions(tmp_path):
    """mkstemp/mkdtemp create 0600/0700; results must be readable like any file the user writes."""
    import os

    from medrepro import atomic

    old = os.umask(0o022)
    try:
        atomic.write_json(tmp_path / "m.json", {"a": 1})
        with atomic.atomic_dir(tmp_path / "d") as d:
            (d / "x").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


# ------------------------------------------------------------------------------ power loss and kills


@pytest.fixture
def fsyncs(monkeypatch) -> list[int]:
    """The inode of every file or directory os.fsync is called on, in order."""
    calls: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        calls.append(os.fstat(fd).st_ino)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_file_is_fsynced_before_the_rename_and_its_directory_after(tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    events: list[tuple[int, bool]] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        events.append((os.fstat(fd).st_ino, path.exists()))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic.write_json(path, {"a": 1})
    assert events == [(path.stat().st_ino, False), (tmp_path.stat().st_ino, True)]


def test_atomic_dir_fsyncs_its_files_and_the_parent(tmp_path, fsyncs):
    target = tmp_path / "table"
    with atomic.atomic_dir(target) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.txt").write_text("a")
        (tmp / "b.txt").write_text("b")
    synced = set(fsyncs)
    for path in (target / "sub" / "a.txt", target / "sub", target / "b.txt", target, tmp_path):
        assert path.stat().st_ino in synced, path
    assert fsyncs[-1] == tmp_path.stat().st_ino


def test_checkpoint_and_digest_are_fsynced(tmp_path, fsyncs):
    path = tmp_path / "step-00000001.pt"
    checkpoint.save(path, payload(1))
    assert sorted(fsyncs) == sorted([path.stat().st_ino, (tmp_path / "step-00000001.pt.sha256").stat().st_ino,
                                     tmp_path.stat().st_ino, tmp_path.stat().st_ino])


def kill_mid_write(path: Path) -> None:
    """Start an atomic write of `path` in a fresh process and SIGKILL it halfway through."""
    script = ("import os, signal, sys\n"
              "from medrepro import atomic\n"
              "def writer(tmp):\n"
              "    tmp.write_bytes(b'half a checkpoint')\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n"
              "atomic.write_with(sys.argv[1], writer)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(path)])
    assert proc.returncode == -9


def test_orphans_of_a_killed_write_are_cleaned(tmp_path):
    atomic.write_bytes(tmp_path / "step-00000001.pt", b"a complete checkpoint")
    kill_mid_write(tmp_path / "step-00000002.pt")
    orphans = [n for n in names(tmp_path) if n.startswith(".step-00000002.pt.") and n.endswith(".tmp")]
    assert len(orphans) == 1, "the failure: a killed write leaves its temporary behind"
    assert atomic.clean_orphans(tmp_path) == [tmp_path / orphans[0]]
    assert names(tmp_path) == ["step-00000001.pt"]


def test_clean_orphans_of_directory_writes(tmp_path):
    (tmp_path / "kept").mkdir()
    (tmp_path / ".kept.old").mkdir()  # replaced and killed before the old version was removed
    (tmp_path / ".table.ab_cd123.tmp").mkdir()  # killed while being built
    (tmp_path / ".table.ab_cd123.tmp" / "part").write_text("x")
    (tmp_path / ".restored.old").mkdir()  # killed between the two renames: the only copy left
    (tmp_path / ".restored.old" / "data").write_text("old")
    (tmp_path / ".hidden.old").write_text("a file, not an atomic_dir leftover")
    (tmp_path / ".config.yaml").write_text("not a temporary")
    removed = atomic.clean_orphans(tmp_path)
    assert removed == [tmp_path / ".kept.old", tmp_path / ".table.ab_cd123.tmp"]
    assert names(tmp_path) == [".config.yaml", ".hidden.old", "kept", "restored"]
    assert (tmp_path / "restored" / "data").read_text() == "old"


def test_clean_orphans_of_missing_directory(tmp_path):
    assert atomic.clean_orphans(tmp_path / "nope") == []


def test_clean_orphans_of_one_target_leaves_the_others(tmp_path):
    for name in (".lmdb.abcd1234.tmp", ".prepared.abcd1234.tmp"):
        (tmp_path / name).mkdir()
    assert atomic.clean_orphans(tmp_path, "lmdb") == [tmp_path / ".lmdb.abcd1234.tmp"]
    assert names(tmp_path) == [".prepared.abcd1234.tmp"]
