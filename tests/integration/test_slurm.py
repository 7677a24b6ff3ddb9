"""Every experiment's batch script (experiments/<exp>/slurm/train.sbatch) submitted with `sbatch --wait`
to a real SLURM on this host (ci/slurm/setup: one node on 127.0.0.1), on the smoke profile, CPU, one
process: the job ends COMPLETED with exit code 0:0 (`sacct -c`, the job completion log) and its run ends
on the same step with the same weights, bit for bit, as the same training command run directly. A job
requeued after its first checkpoint (`scontrol requeue`) resumes from it and ends on the same weights.

`./dev slurm` brings the cluster up and runs these. Without a cluster that answers they skip, unless
MEDREPRO_SLURM=1 (set by the session), where that fails.
"""

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from tests.integration.conftest import (
    BIOMEDICA_DATA,
    BIOMEDICA_TRAIN,
    DATA_OVERRIDES,
    REPO,
    TRAIN_OVERRIDES,
    medrepro,
    process_env,
)
from tests.integration.test_ct_clip import DATA as CT_CLIP_DATA
from tests.integration.test_ct_clip import TRAIN as CT_CLIP_TRAIN
from tests.integration.test_exmed_bert import SMALL as EXMED_SMALL

pytestmark = [pytest.mark.integration, pytest.mark.slurm]

JOB_TIMEOUT_S = 600
SLURM_CONF = Path(os.environ.get("MEDREPRO_SLURM_DIR", "/tmp/medrepro-slurm")) / "slurm.conf"


@dataclass(frozen=True)
class Case:
    experiment: str
    prepare: tuple[tuple[str, ...], ...]  # medrepro commands that prepare the work directory
    direct: tuple[str, ...]  # the training command the batch script runs, but the run directory
    run_option: str  # how the command takes the run directory: "--out" or a key= override
    overrides: tuple[str, ...]
    finals: tuple[str, ...]  # the final weights, relative to the run directory

    def direct_command(self, run: Path) -> list[str]:
        where = ["--out", str(run)] if self.run_option == "--out" else [f"{self.run_option}={run}"]
        return [*self.direct, "--profile", "smoke", *where, *self.overrides]


CROSS_ENCODER_TRAIN = ("train.epochs=0.03", "train.eval_every_epochs=0.015", "train.save_every_steps=4",
                       "train.log_every_steps=1", "train.early_stopping_patience=0",
                       "train.tracking.tensorboard=false")
CASES = {case.experiment: case for case in [
    Case("retclip", (("prepare", *DATA_OVERRIDES), ("build-lmdb", "--workers", "1", *DATA_OVERRIDES)),
         ("retclip", "train", "--variant", "pubmedbert"), "--out",
         (*DATA_OVERRIDES, *TRAIN_OVERRIDES, "train.epochs=1"), ("seed-0/final.pt",)),
    Case("cross_encoder", (("prepare",), ("index",), ("mine",)), ("cross_encoder", "train"), "--out",
         CROSS_ENCODER_TRAIN, ("final.pt",)),
    Case("ct_clip", (("prepare", *CT_CLIP_DATA), ("shards", *CT_CLIP_DATA)),
         ("ct_clip", "train", "--variant", "cxr_bert"), "--out", (*CT_CLIP_TRAIN, "train.epochs=1"), ("final.pt",)),
    Case("exmed_bert", (("prepare", *EXMED_SMALL), ("clinvec", *EXMED_SMALL)), ("exmed_bert", "pretrain"),
         "paths.pretrained", (*EXMED_SMALL, "pretrain.train.epochs=1"),
         ("random_init/final.pt", "clinvec_init/final.pt")),
    Case("biomedica_clip", (("prepare", *BIOMEDICA_DATA), ("audit", *BIOMEDICA_DATA)),
         ("biomedica_clip", "train"), "--out", (*BIOMEDICA_TRAIN, "train.epochs=1"),
         ("logs/open_clip/checkpoints/epoch_1.pt",)),
]}


def slurm_env(**extra: str) -> dict[str, str]:
    return process_env(SLURM_CONF=os.environ.get("SLURM_CONF", str(SLURM_CONF)), **extra)


def cluster_answers() -> bool:
    # Without its config file a SLURM client retries for a minute before it gives up.
    if not shutil.which("sinfo") or not Path(slurm_env()["SLURM_CONF"]).is_file():
        return False
    try:
        return bool(subprocess.run(["sinfo", "--noheader", "--format", "%t"], env=slurm_env(), capture_output=True,
                                   text=True, timeout=30).stdout.strip())
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture(scope="module", autouse=True)
def cluster() -> None:
    if cluster_answers():
        return
    if os.environ.get("MEDREPRO_SLURM") == "1":
        pytest.fail("MEDREPRO_SLURM=1 but no SLURM cluster answers `sinfo`; run ci/slurm/setup first")
    pytest.skip("no SLURM cluster answers `sinfo` (ci/slurm/setup starts one)")


@pytest.fixture(scope="module")
def workdir_of(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """An experiment's smoke data, prepared on first use."""
    dirs: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in dirs:
            dirs[name] = tmp_path_factory.mktemp(name)
            for command in CASES[name].prepare:
                medrepro([name, *command], dirs[name])
        return dirs[name]
    return get


@dataclass
class Job:
    sbatch: subprocess.Popen  # `sbatch --wait`, running until the job ends
    id: str
    log: Path


def submit(case: Case, workdir: Path, run: Path) -> Job:
    """`sbatch --wait` of the experiment's batch script in the background, from the repository root (where
    the script finds the shared part) into `workdir`, the run directory `run`."""
    script = REPO / "experiments" / case.experiment / "slurm" / "train.sbatch"
    sbatch = subprocess.Popen(["sbatch", "--wait", "--parsable", "--chdir", str(workdir),
                               "--output", str(workdir / f"{run.parent.name}-%j.out"), str(script), *case.overrides],
                              cwd=REPO, env=slurm_env(PROFILE="smoke", RUN=str(run)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    # --parsable prints the job id as soon as the job is queued.
    job_id = sbatch.stdout.readline().strip().split(";")[0]
    assert job_id.isdigit(), f"sbatch did not queue the job: {sbatch.stderr.read()}"
    return Job(sbatch, job_id, workdir / f"{run.parent.name}-{job_id}.out")


def finish(job: Job) -> str:
    """Waits for `sbatch --wait`, checks the job's end in the completion log; its output."""
    _, stderr = job.sbatch.communicate(timeout=JOB_TIMEOUT_S)
    log = job.log.read_text()
    assert job.sbatch.returncode == 0, f"sbatch --wait exited {job.sbatch.returncode}: {stderr}\n{log[-4000:]}"
    accounting = subprocess.run(["sacct", "--completion", "--jobs", job.id, "--noheader", "--parsable2",
                                 "--format", "State,ExitCode"], env=slurm_env(), capture_output=True, text=True,
                                check=True).stdout.split()
    # A requeued job has a record for each of its runs; the last is the final one.
    assert accounting and accounting[-1] == "COMPLETED|0:0", f"job {job.id}: {accounting}\n{log[-4000:]}"
    return log


def final(path: Path) -> tuple[int, dict[str, torch.Tensor]]:
    """The step (or open_clip's epoch) and the weights of a final checkpoint."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in saved:
        return saved["epoch"], saved["state_dict"]
    return saved["train_state"]["step"], saved["model"]


def assert_same_end(case: Case, direct: Path, job: Path) -> None:
    for name in case.finals:
        (step_a, a), (step_b, b) = final(direct / name), final(job / name)
        assert step_a == step_b, f"{name}: the direct run ended on {step_a}, the job on {step_b}"
        assert a.keys() == b.keys() and not [k for k in a if not torch.equal(a[k], b[k])], f"{name}: weights differ"


@pytest.mark.parametrize("experiment", list(CASES))
def test_batch_script_completes_like_the_direct_command(experiment, workdir_of):
    case, workdir = CASES[experiment], workdir_of(experiment)
    # Apart, so that nothing beside a run (an experiment's tracking store) is written by both.
    job_run, direct_run = workdir / "slurm" / "run", workdir / "direct" / "run"
    # The job and the direct run side by side: each holds one core.
    job = submit(case, workdir, job_run)
    medrepro(case.direct_command(direct_run), workdir)
    log = finish(job)
    assert "from the start" in log
    assert_same_end(case, direct_run, job_run)


def test_requeued_job_resumes_from_its_last_checkpoint(workdir_of):
    """cross_encoder, 33 steps, checkpoints every 4: requeued once its first checkpoint exists, the job
    starts again, resumes from that checkpoint, completes, and ends on the direct run's weights."""
    case = replace(CASES["cross_encoder"], overrides=(*CROSS_ENCODER_TRAIN, "train.epochs=0.1",
                                                      "train.eval_every_epochs=0.05"))
    workdir = workdir_of(case.experiment)
    run, direct_run = workdir / "requeued" / "run", workdir / "requeued-direct" / "run"
    job = submit(case, workdir, run)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not list((run / "checkpoints").glob("step-*.pt.sha256")):
        assert job.sbatch.poll() is None and time.monotonic() < deadline, "no checkpoint before the job ended"
        time.sleep(0.1)
    subprocess.run(["scontrol", "requeue", job.id], env=slurm_env(), check=True)
    assert not (run / "final.pt").exists(), "the run finished before the requeue; the test proves nothing"
    # SLURM holds a requeued batch job back for two minutes (its begin time); release it at once.
    while subprocess.run(["squeue", "--noheader", "--jobs", job.id, "--format", "%T"], env=slurm_env(),
                         capture_output=True, text=True).stdout.strip() != "PENDING":
        assert time.monotonic() < deadline, "the requeued job never became pending"
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"jobid={job.id}", "starttime=now"], env=slurm_env(), check=True)
    medrepro(case.direct_command(direct_run), workdir)
    log = finish(job)
    assert "restart 1" in log and "from the last checkpoint" in log and "resumed from" in log, log[-4000:]
    assert_same_end(case, direct_run, run)
