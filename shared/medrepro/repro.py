"""Seeding, deterministic mode, and the manifest every run writes beside its outputs."""

import datetime
import hashlib
import importlib.metadata
import os
import platform
import random
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medrepro import atomic, runtime
from medrepro.errors import DataError

_SHA256SUM_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")

def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch, and make torch pick deterministic kernels.

    Thread counts and CPU kernel levels are set earlier, from the config's `runtime` section, by
    `medrepro.runtime.pin` (they must be in place before torch loads); the manifest records them.

    DataLoaders get their own generators (see `medrepro.data`), so creating one never draws from
    the global stream that dropout uses; that is what lets a resumed run match an uninterrupted one.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS reads this when CUDA initialises; without it deterministic mode raises on GPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    """The RNG streams training draws from (torch's, CPU and CUDA), for a checkpoint.

    Python's and NumPy's global streams are seeded but not saved: our code draws only from private
    generators, while libraries draw from the globals at moments that depend on threads and the
    network (a telemetry thread's retry jitter). Saving them made a checkpoint's bytes differ from run
    to run with identical weights, and restoring them would change nothing that training computes.
    """
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(path: str | Path) -> str:
    """Checksum of a file, or of a directory as its sorted relative paths and file checksums."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def environment() -> dict[str, Any]:
    """What produced a result: package versions, code version, hardware and container image."""
    # Every installed distribution: scipy, torchmetrics or faiss change numbers as surely as torch.
    versions = {dist.metadata["Name"]: dist.version for dist in importlib.metadata.distributions()}
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "runtime": runtime.state(),
        "cuda": torch.version.cuda if gpus else None,
        "gpus": gpus,
        "packages": dict(sorted(versions.items(), key=lambda kv: kv[0].lower())),
        "git": _git_state(),
        "image": {key.lower(): os.environ[key] for key in ("MEDREPRO_IMAGE", "MEDREPRO_IMAGE_REVISION")
                  if key in os.environ},
        "argv": sys.argv,
        "utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def write_manifest(path: str | Path, data: Iterable[str | Path] = (), extra: dict[str, Any] | None = None,
                   checksums: dict[str, str] | None = None) -> dict[str, Any]:
    """Write `manifest.json`: the environment plus SHA-256 checksums of the data a run read (given, or
    computed from `data`)."""
    manifest = environment()
    manifest["data"] = checksums if checksums is not None else {str(p): sha256_tree(p) for p in data}
    if extra:
        manifest.update(extra)
    atomic.write_json(path, manifest)
    return manifest


def _git_state() -> dict[str, Any] | None:
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip() != ""
    except (OSError, subprocess.CalledProcessError):
        # Inside an image there is no .git; the image labels carry the revision instead.
        return None
    return {"commit": commit, "dirty": dirty}


def verify_sha256_manifest(manifest: str | Path, root: str | Path) -> int:
    """Check every file of a `sha256sum`-format manifest (paths relative to `root`); returns the count.

    The first missing or mismatching file stops with one line naming it.
    """
    manifest, root = Path(manifest), Path(root)
    if not manifest.is_file():
        raise DataError(f"checksum manifest not found: {manifest}")
    count = 0
    for line_no, line in enumerate(manifest.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        # sha256sum writes "<digest>  <name>" in text mode and "<digest> *<name>" in binary mode.
        match = _SHA256SUM_LINE.fullmatch(line)
        if match is None:
            raise DataError(f"{manifest}:{line_no}: expected '<sha256>  <relative path>', got {line[:80]!r}")
        digest, name = match.group(1).lower(), match.group(2)
        path = root / name
        if not path.is_file():
            raise DataError(f"{path} is listed in {manifest} but missing: restore it from the original download")
        if sha256_file(path) != digest:
            raise DataError(f"{path} does not match its checksum in {manifest}: the file is corrupt or modified")
        count += 1
    return count
