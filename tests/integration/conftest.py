"""Integration fixtures.

`reproduced`: `medrepro verify` once per test session: the whole smoke pipeline reproduced by `dvc repro`
in a scratch copy of the work tree (traced, for the stage-dependency test). Every experiment's
end-to-end checks read that one run; nothing runs the pipeline twice. It starts in the background
with the session's first integration test, and the tests that read it run last: the smoke profile
pins one thread, so the pipeline takes one core while the other tests run on the rest.
`retclip_workdir`: a tiny prepared retclip dataset for the training reproducibility tests.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.conftest import add_time

REPO = Path(__file__).resolve().parents[2]
TRACE_HOOK = Path(__file__).with_name("trace")

# Small enough for seconds per run, large enough that an epoch has several optimizer steps:
# 120 patients → 84 train pairs → 5 steps of 16 per epoch.
DATA_OVERRIDES = ["data.synthetic_patients=120", "encoders.biobert.tiny.dropout=0.0"]
# One training seed: the runs' weights are in <run>/seed-0/.
TRAIN_OVERRIDES = ["seeds=[0]", "train.epochs=3", "train.batch_size=16", "train.eval_every_epochs=1.0",
                   "train.log_every_steps=5", "train.tracking.tensorboard=false", "train.warmup_epochs=0.5"]


def reads_the_pipeline(item: pytest.Item) -> bool:
    return "reproduced" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The image tests go first: the first base image build needs about 24 GB of free disk at its
    peak, which a fresh CI machine has before the other tests have written anything. The tests that
    read the background pipeline go last (in their order), so that everything else runs while it does."""
    items.sort(key=lambda item: (item.get_closest_marker("docker") is None, reads_the_pipeline(item)))


def process_env(**extra: str) -> dict[str, str]:
    """The caller's environment: the smoke configs pin threads and CPU kernels themselves (their
    `runtime` section). Hash seeds stay random, as for users."""
    return {**os.environ, **extra}


def medrepro(args: list[str], cwd: Path, check: bool = True, launcher: list[str] | None = None,
             env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run the real command line in a fresh process, as users and DVC do."""
    cmd = [*(launcher or [sys.executable, "-m"]), "medrepro", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env or process_env(), capture_output=True, text=True, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def kill_when(args: list[str], cwd: Path, marker: Path, timeout_s: float = 300) -> None:
    """Run `medrepro ARGS` in a fresh process and SIGKILL it as soon as `marker` exists (a checkpoint
    file); fails if the process ends first or the file never appears."""
    proc = subprocess.Popen([sys.executable, "-m", "medrepro", *args], cwd=cwd, env=process_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        assert proc.poll() is None, f"training ended before it could be killed:\n{proc.stderr.read().decode()}"
        assert time.monotonic() < deadline, f"no {marker.name} within {timeout_s:.0f} s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


# The prelude of a process that must not see the repository: an export is loaded there by its ecosystem's
# loader alone. It drops the repository and the editable install from the import path and checks that
# neither package can be imported.
ISOLATE = """
import importlib.util, os, sys
repo = os.path.realpath(sys.argv.pop(1))
def inside(path, directory):
    path = os.path.realpath(path or ".")
    return path == directory or path.startswith(directory + os.sep)
sys.path[:] = [p for p in sys.path if "__editable__" not in p and (not inside(p, repo) or inside(p, sys.prefix))]
sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path_importer_cache.clear()
for package in ("medrepro", "experiments"):
    assert importlib.util.find_spec(package) is None, f"{package} can be imported: the process sees the repository"
"""
# What loaders print when they fill weights from elsewhere, leave them random, or ask to run custom code.
LOADER_WARNINGS = ("initialized partially", "initialized randomly", "newly initialized", "MISSING",
                   "trust_remote_code")


def run_isolated(code: str, cwd: Path, *args: str) -> dict:
    """`code` in a fresh Python process in `cwd`, free of the repository, offline, with its own caches; the
    JSON its last stdout line prints."""
    env = {"PATH": os.environ["PATH"], "HOME": str(cwd / "home"), "HF_HOME": str(cwd / "hf"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", ISOLATE + code, str(REPO), *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for sign in LOADER_WARNINGS:
        assert sign not in proc.stderr, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@contextmanager
def hidden(directory: Path) -> Iterator[None]:
    """`directory` renamed away for the block: nothing can read it there."""
    away = directory.with_name(directory.name + ".hidden")
    directory.rename(away)
    try:
        yield
    finally:
        away.rename(directory)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "final.pt", weights_only=True)["model"]


@pytest.fixture(scope="session")
def retclip_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("retclip")
    medrepro(["retclip", "prepare", *DATA_OVERRIDES], workdir)
    medrepro(["retclip", "build-lmdb", "--workers", "2", *DATA_OVERRIDES], workdir)
    return workdir


@pytest.fixture(scope="session")
def reference_run(retclip_workdir: Path) -> Path:
    """One uninterrupted single-process run; other tests must reproduce it bit for bit."""
    run = retclip_workdir / "runs" / "reference"
    medrepro(["retclip", "train", "--variant", "pubmedbert", "--out", str(run), *TRAIN_OVERRIDES], retclip_workdir)
    return run


# biomedica_clip's test settings: 4 training shards of 32 pairs, 2 epochs.
BIOMEDICA_DATA = ["data.synthetic.train_shards=4", "data.synthetic.samples_per_shard=32",
                  "data.synthetic.heldout_samples=64"]
BIOMEDICA_TRAIN = [*BIOMEDICA_DATA, "train.epochs=2", "train.batch_size=32", "train.warmup=2",
                   "train.tensorboard=false"]


def open_clip_weights(path: Path) -> dict[str, torch.Tensor]:
    """The weights of an open_clip_train checkpoint (epoch_N.pt)."""
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def whole_zip(path: Path) -> bool:
    """Whether `path` is a completely written zip (torch.save's format): a checkpoint still being written is not."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError):
        return False


@pytest.fixture(scope="session")
def biomedica_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("biomedica_clip")
    medrepro(["biomedica_clip", "prepare", *BIOMEDICA_DATA], root)
    medrepro(["biomedica_clip", "audit", *BIOMEDICA_DATA], root)
    return root


@pytest.fixture(scope="session")
def biomedica_reference(biomedica_workdir: Path) -> Path:
    """One uninterrupted run on the CSV twin (the smoke profile's dataset type); tests only read it."""
    run = biomedica_workdir / "runs" / "reference"
    medrepro(["biomedica_clip", "train", "--out", str(run), *BIOMEDICA_TRAIN], biomedica_workdir)
    return run


@dataclass
class Reproduced:
    workdir: Path
    verify: subprocess.CompletedProcess
    trace_dir: Path


class PipelineInBackground:
    """`medrepro verify` into a kept work directory, every medrepro process traced, in its own process
    group (so that an interrupted session stops DVC and its stages too)."""

    def __init__(self, root: Path):
        self.workdir, self.trace_dir, self.log_dir = root / "work", root / "trace", root / "log"
        self.trace_dir.mkdir()
        self.log_dir.mkdir()
        env = process_env(PYTHONPATH=os.pathsep.join([str(TRACE_HOOK), os.environ.get("PYTHONPATH", "")]),
                          MEDREPRO_TRACE_DIR=str(self.trace_dir),
                          PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        self.args = [sys.executable, "-m", "medrepro", "verify", "--workdir", str(self.workdir)]
        self.started = time.monotonic()
        with open(self.log_dir / "stdout", "wb") as out, open(self.log_dir / "stderr", "wb") as err:
            self.proc = subprocess.Popen(self.args, cwd=REPO, env=env, stdout=out, stderr=err,
                                         start_new_session=True)
        # When it ended, for the time table: the tests that read it may ask long after.
        self.seconds: float | None = None
        threading.Thread(target=self._time, daemon=True).start()

    def _time(self) -> None:
        self.proc.wait()
        self.seconds = time.monotonic() - self.started

    def result(self) -> Reproduced:
        returncode = self.proc.wait()
        stdout, stderr = ((self.log_dir / name).read_text(errors="replace") for name in ("stdout", "stderr"))
        assert (self.workdir / "dvc.lock").is_file(), f"verify did not get to run the pipeline:\n{stderr[-4000:]}"
        return Reproduced(self.workdir, subprocess.CompletedProcess(self.args, returncode, stdout, stderr),
                          self.trace_dir)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="session", autouse=True)
def pipeline(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineInBackground | None]:
    """Started with the first integration test, if any selected test reads it."""
    if not any(reads_the_pipeline(item) for item in request.session.items):
        yield None
        return
    running = PipelineInBackground(tmp_path_factory.mktemp("verify"))
    yield running
    running.stop()
    if running.seconds is not None:
        add_time(request.config, "smoke pipeline (medrepro verify, in the background)", running.seconds)


@pytest.fixture(scope="session")
def reproduced(pipeline: PipelineInBackground) -> Reproduced:
    return pipeline.result()
