"""Seeding, RNG state capture, run manifests and data checksums."""

import hashlib
import importlib.metadata
import io
import json
import os
import platform
import random

import numpy as np
import pytest
import torch

from medrepro import repro
from medrepro.errors import DataError


@pytest.fixture(autouse=True)
def restore_global_rng_and_determinism(monkeypatch):
    """seed_everything changes process-wide state; put it back so other tests are unaffected."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    deterministic = torch.are_deterministic_algorithms_enabled()
    saved = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    yield
    torch.use_deterministic_algorithms(deterministic)
    random.setstate(saved[0])
    np.random.set_state(saved[1])
    torch.set_rng_state(saved[2])


def torch_draws() -> tuple:
    return torch.rand(3).tolist(), torch.randn(2).tolist(), torch.randint(0, 1 << 30, (2,)).tolist()


def draws() -> tuple:
    return (random.random(), random.randrange(1 << 30), np.random.rand(3).tolist(), np.random.randn(3).tolist(),
            *torch_draws())


# ----------------------------------------------------------------------------------------- seeding


def test_seed_everything_repeats_draws():
    repro.seed_everything(123, deterministic=False)
    first = draws()
    repro.seed_everything(123, deterministic=False)
    assert draws() == first
    repro.seed_everything(124, deterministic=False)
    other = draws()
    assert all(a != b for a, b in zip(other, first, strict=True))


def test_seed_everything_large_seed():
    repro.seed_everything(2**32 + 5, deterministic=False)
    first = draws()
    repro.seed_everything(2**32 + 5, deterministic=False)
    assert draws() == first


def test_seed_everything_deterministic_mode():
    repro.seed_everything(0, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    assert "CUBLAS_WORKSPACE_CONFIG" in os.environ


# ------------------------------------------------------------------------------------------- state


def test_rng_state_round_trip_restores_the_torch_stream():
    repro.seed_everything(7, deterministic=False)
    torch.randn(1)
    state = repro.rng_state()
    expected = torch_draws()
    torch_draws()
    repro.set_rng_state(state)
    assert torch_draws() == expected


def test_rng_state_survives_weights_only_torch_load(tmp_path):
    repro.seed_everything(11, deterministic=False)
    torch.rand(5)
    state = repro.rng_state()
    expected = torch_draws()
    torch.save({"rng": [state]}, tmp_path / "rng.pt")
    repro.seed_everything(99, deterministic=False)
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)["rng"][0]
    repro.set_rng_state(loaded)
    assert torch_draws() == expected


def saved_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_checkpointed_rng_state_ignores_library_draws_from_the_global_streams():
    """A library drawing from Python's or NumPy's global stream (a telemetry thread, at a moment that
    depends on the network) must not change a checkpoint's bytes."""
    repro.seed_everything(3, deterministic=False)
    quiet = saved_bytes(repro.rng_state())
    repro.seed_everything(3, deterministic=False)
    random.random()
    np.random.rand()
    assert saved_bytes(repro.rng_state()) == quiet


def test_checkpoints_written_before_this_format_still_restore():
    """Older checkpoints also saved the Python and NumPy streams; their torch stream is what counts."""
    repro.seed_everything(5, deterministic=False)
    state = {**repro.rng_state(), "python": random.getstate(), "numpy": {}}
    expected = torch_draws()
    repro.set_rng_state(state)
    assert torch_draws() == expected


# -------------------------------------------------------------------------------------- checksums


def make_tree(root, files: dict[str, bytes]):
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


FILES = {"a.txt": b"alpha", "sub/b.bin": bytes(range(256)), "sub/deeper/c": b""}


def test_sha256_file_matches_hashlib(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 3000)
    assert repro.sha256_file(path, chunk=1024) == hashlib.sha256(b"x" * 3000).hexdigest()
    assert repro.sha256_tree(path) == repro.sha256_file(path)


def test_sha256_tree_stable_and_order_independent(tmp_path):
    one = make_tree(tmp_path / "one", FILES)
    two = make_tree(tmp_path / "two", dict(reversed(list(FILES.items()))))
    assert repro.sha256_tree(one) == repro.sha256_tree(one) == repro.sha256_tree(two)


def test_sha256_tree_changes_on_content_rename_and_new_file(tmp_path):
    root = make_tree(tmp_path / "d", FILES)
    base = repro.sha256_tree(root)
    (root / "sub" / "b.bin").write_bytes(bytes(range(255)) + b"\x00")
    changed = repro.sha256_tree(root)
    assert changed != base
    (root / "sub" / "b.bin").write_bytes(bytes(range(256)))
    assert repro.sha256_tree(root) == base
    (root / "a.txt").rename(root / "a2.txt")
    assert repro.sha256_tree(root) != base
    (root / "a2.txt").rename(root / "a.txt")
    (root / "sub" / "new").write_bytes(b"")
    assert repro.sha256_tree(root) != base


def test_sha256_tree_moving_a_file_between_directories_changes_it(tmp_path):
    root = make_tree(tmp_path / "d", FILES)
    base = repro.sha256_tree(root)
    (root / "a.txt").rename(root / "sub" / "a.txt")
    assert repro.sha256_tree(root) != base


# --------------------------------------------------------------------------------------- manifest


def test_write_manifest(tmp_path):
    data_file = tmp_path / "data" / "table.bin"
    data_dir = make_tree(tmp_path / "data" / "lmdb", FILES)
    data_file.write_bytes(b"records")
    out = tmp_path / "run" / "manifest.json"
    returned = repro.write_manifest(out, [data_file, data_dir], extra={"note": "x"})
    manifest = json.loads(out.read_text())
    assert manifest == returned
    assert manifest["packages"]["torch"] == importlib.metadata.version("torch")
    assert torch.__version__.startswith(manifest["packages"]["torch"])
    assert manifest["python"] == platform.python_version()
    assert manifest["data"] == {str(data_file): hashlib.sha256(b"records").hexdigest(),
                                str(data_dir): repro.sha256_tree(data_dir)}
    assert manifest["data"][str(data_file)] == repro.sha256_file(data_file)
    assert manifest["note"] == "x"


# ------------------------------------------------------------------------------ sha256sum manifests


def sums(root, names) -> str:
    return "".join(f"{repro.sha256_file(root / n)}  {n}\n" for n in names)


def test_verify_manifest_passes(tmp_path):
    root = make_tree(tmp_path / "raw", FILES)
    manifest = tmp_path / "SHA256SUMS"
    manifest.write_text(sums(root, ["a.txt", "sub/b.bin"]) + "\n" + sums(root, ["sub/deeper/c"]))
    assert repro.verify_sha256_manifest(manifest, root) == 3


def test_verify_manifest_file_name_with_spaces(tmp_path):
    root = make_tree(tmp_path / "raw", {"Training Images/1_left.jpg": b"jpeg"})
    manifest = tmp_path / "SHA256SUMS"
    manifest.write_text(sums(root, ["Training Images/1_left.jpg"]))
    assert repro.verify_sha256_manifest(manifest, root) == 1


def test_verify_manifest_binary_mode_lines(tmp_path):
    """`sha256sum -b` writes '<digest> *<name>' (one space, then '*'); the parser strips '*' but
    splits on two spaces, so such a manifest is rejected as malformed."""
    root = make_tree(tmp_path / "raw", FILES)
    manifest = tmp_path / "SHA256SUMS"
    manifest.write_text(f"{repro.sha256_file(root / 'a.txt')} *a.txt\n")
    assert repro.verify_sha256_manifest(manifest, root) == 1


def test_verify_manifest_mismatch_names_file(tmp_path):
    root = make_tree(tmp_path / "raw", FILES)
    manifest = tmp_path / "SHA256SUMS"
    manifest.write_text(sums(root, ["a.txt", "sub/b.bin"]))
    (root / "sub" / "b.bin").write_bytes(b"tampered")
    with pytest.raises(DataError) as info:
        repro.verify_sha256_manifest(manifest, root)
    assert str(root / "sub" / "b.bin") in str(info.value) and "checksum" in str(info.value)


def test_verify_manifest_missing_file_names_it(tmp_path):
    root = make_tree(tmp_path / "raw", FILES)
    manifest = tmp_path / "SHA256SUMS"
    manifest.write_text(sums(root, ["a.txt"]) + f"{'0' * 64}  gone.jpg\n")
    with pytest.raises(DataError) as info:
        repro.verify_sha256_manifest(manifest, root)
    assert str(root / "gone.jpg") in str(info.value) and "missing" in str(info.value)


@pytest.mark.parametrize("bad", ["abc123  a.txt", "not a checksum line", f"{'0' * 64} a.txt"])
def test_verify_manifest_malformed_line_names_manifest_and_line(tmp_path, bad):
    root = make_tree(tmp_path / "raw", FILES)
    manifest = tmp_path / "SHA256SUMS"
    manifest.write_text(sums(root, ["a.txt"]) + bad + "\n")
    with pytest.raises(DataError) as info:
        repro.verify_sha256_manifest(manifest, root)
    assert f"{manifest}:2" in str(info.value)


def test_verify_manifest_not_found(tmp_path):
    with pytest.raises(DataError, match="not found"):
        repro.verify_sha256_manifest(tmp_path / "SHA256SUMS", tmp_path)
