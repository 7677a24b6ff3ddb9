"""Two nodes on one machine (loopback, gloo, one CPU process per node) for the experiments that train
through the shared loop, against one process at the same global batch, dropout off:

(a) the manifest records 2 processes; (b) the run directory holds exactly the files of the 1-process
run, and the node without global rank 0, in its own working directory with its own copy of the data,
writes nothing there (`--out` is relative: a second writer would write into its own node's directory);
(c) the losses up to the first checkpoint equal the 1-process run's within 1e-6 relative: each global
batch is the same samples (a repeated or missing one would change the loss; the sampler's disjoint
partition itself: tests/unit/test_sampling.py); (d, e) that node is killed (agent and worker) once the
first checkpoint exists, the other fails within a bounded time, and `--resume latest` on both nodes
reads that checkpoint on both and ends on the 1-process run's final step.

exmed_bert's pretraining runs two trainings in one command (random, then ClinVec initialisation): both are
checked, and the node is killed in the first, so the resumed command finishes it and runs the second whole.
"""

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration import multinode
from tests.integration.conftest import REPO, TRAIN_OVERRIDES, medrepro
from tests.integration.multinode import TwoNodes
from tests.integration.test_ct_clip import DATA as CT_CLIP_DATA
from tests.integration.test_ct_clip import TRAIN as CT_CLIP_TRAIN

pytestmark = pytest.mark.integration

# How long node 0 may run on after node 1 died: a dead peer's closed sockets fail gloo's next
# collective at once; far below this means no collective waits for the process group's timeout.
FAILURE_BOUND_S = 60
RUN_TIMEOUT_S = 600


@dataclass(frozen=True)
class Case:
    experiment: str
    args: tuple[str, ...]  # of the command, but its output directory
    parts: tuple[str, ...]  # the training runs inside the output directory ("" when it is one run itself)
    save_every: int
    command: str = "train"
    out_key: str = "--out"  # the option, or the config key, that names the output directory
    train_section: str = "train"

    def train(self, out: str, *extra: str) -> list[str]:
        where = [self.out_key, out] if self.out_key.startswith("--") else [f"{self.out_key}={out}"]
        return [self.experiment, self.command, *where, *self.args,
                f"{self.train_section}.save_every_steps={self.save_every}", *extra]

    def runs(self, workdir: Path, out: str) -> list[Path]:
        return [workdir / out / part for part in self.parts]


def files(root: Path) -> set[str]:
    """Every file below `root`, relative; symlinked directories are not followed."""
    return {str(Path(d, f).relative_to(root)) for d, _, names in os.walk(root) for f in names}


def losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]


def single_process(case: Case, workdir: Path) -> list[Path]:
    medrepro(case.train("runs/one-process"), workdir)
    return case.runs(workdir, "runs/one-process")


def node_directory(workdir: Path, root: Path) -> Path:
    """Node 1's working directory: its own copy of the prepared data, nothing else (node 0's is `workdir`)."""
    node = root / "node1"
    shutil.copytree(workdir / "data", node / "data", symlinks=True)
    return node


def resumed_line(stderr: str) -> str:
    return next((line for line in stderr.splitlines() if line.startswith("resumed from")), "")


def check_two_nodes(case: Case, workdir: Path, root: Path, singles: list[Path], launcher: multinode.Launcher,
                    kill: bool) -> None:
    """(a)-(e) above, both nodes started by `launcher`; without `kill`, one uninterrupted run: (a)-(c).

    torchrun's c10d rendezvous ignores --node_rank: global rank 0 lands on the node whose address and
    process id sort first, so the node holding it is read from where the run directory appeared."""
    cwds = (workdir, node_directory(workdir, root))
    before = [files(cwd) for cwd in cwds]
    out = f"runs/{root.name}"
    firsts = [case.runs(cwd, out)[0] for cwd in cwds]  # each node's path of the first training run
    first = f"step-{case.save_every:08d}.pt"

    with TwoNodes(launcher, case.train(out), cwds, root / "logs-1") as nodes:
        if kill:
            main = nodes.wait_for([run / "checkpoints" / first for run in firsts], RUN_TIMEOUT_S)
            killed = nodes.kill(1 - main)
            results = nodes.wait(RUN_TIMEOUT_S, nodes=(main,))
        else:
            results = nodes.wait(RUN_TIMEOUT_S)
            main = next(node for node, run in enumerate(firsts) if run.exists())
    other = 1 - main
    assert files(cwds[other]) == before[other], f"node {other} (not rank 0) wrote into its working directory"

    if kill:
        assert not (firsts[main] / "final.pt").exists(), "the run finished before the kill; the test proves nothing"
        seconds = results[0].ended - killed
        print(f"{case.experiment}: node {other} killed once {first} existed; node {main}'s agent exited with "
              f"{results[0].returncode} {seconds:.1f} s later")
        assert results[0].returncode != 0, f"node {main} must fail when node {other} dies"
        assert seconds < FAILURE_BOUND_S, f"node {main} ran on {seconds:.0f} s after node {other} died"
        # Storage every node sees, as on a cluster: the other node reads the run directory at its own path.
        (cwds[other] / out).parent.mkdir(exist_ok=True)
        (cwds[other] / out).symlink_to(cwds[main] / out)
        with TwoNodes(launcher, case.train(out, "--resume", "latest"), cwds, root / "logs-2") as nodes:
            results = nodes.wait(RUN_TIMEOUT_S)
    for node, result in enumerate(results):
        assert result.returncode == 0, f"node {node} failed:\n{result.stderr[-4000:]}"
        if kill:
            assert first in resumed_line(result.stderr), f"node {node} did not read {first}"

    for index, (single, run) in enumerate(zip(singles, case.runs(cwds[main], out), strict=True)):
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["processes"] == 2, f"{run}: the nodes' processes must train together, not each alone"
        # Only the first run was under way when the node died; a later one starts after the resume.
        assert manifest["resumed_from_step"] == (case.save_every if kill and index == 0 else None)
        assert files(run) == files(single), f"{run} differs from the 1-process run's"
        one, two = losses(single), losses(run)
        assert [s for s, _ in two] == [s for s, _ in one], f"{run}: one loss row per step, once, to the same end"
        for (step, a), (_, b) in zip(one[:case.save_every], two[:case.save_every], strict=True):
            assert abs(a - b) <= 1e-6 * abs(a), f"{run}, step {step}: loss {a} with 1 process, {b} with 2 nodes"
        for done in (single, run):
            assert json.loads((done / "complete.json").read_text())["step"] == one[-1][0]


def torchrun(rdzv_id: str) -> multinode.Launcher:
    return lambda node, port: multinode.torchrun(node, port, rdzv_id)


# retclip: biobert's tiny tower is built without dropout in `retclip_workdir`; 5 steps an epoch, 15 in all.
RETCLIP = Case("retclip", ("--variant", "biobert", *TRAIN_OVERRIDES, "train.log_every_steps=1"), ("seed-0",), 3)


def test_retclip_two_nodes(retclip_workdir, tmp_path):
    single = single_process(RETCLIP, retclip_workdir)
    check_two_nodes(RETCLIP, retclip_workdir, tmp_path / "retclip-two-nodes", single, torchrun("retclip"), kill=True)


# ct_clip: test_ct_clip.py's data and training (one shard, 6 steps an epoch, 18 in all, text tower without
# dropout).
CT_CLIP = Case("ct_clip", ("--variant", "cxr_bert", *CT_CLIP_TRAIN), ("",), 4)
ACCELERATE_CONFIG = REPO / "experiments" / "ct_clip" / "accelerate" / "multi_node.yaml"


@pytest.fixture(scope="module")
def ct_clip_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("ct_clip_multinode")
    medrepro(["ct_clip", "prepare", *CT_CLIP_DATA], work)
    medrepro(["ct_clip", "shards", *CT_CLIP_DATA], work)
    return work


@pytest.fixture(scope="module")
def ct_clip_single(ct_clip_workdir: Path) -> list[Path]:
    return single_process(CT_CLIP, ct_clip_workdir)


def test_ct_clip_two_nodes(ct_clip_workdir, ct_clip_single, tmp_path):
    check_two_nodes(CT_CLIP, ct_clip_workdir, tmp_path / "ct_clip-two-nodes", ct_clip_single, torchrun("ct_clip"),
                    kill=True)


def test_ct_clip_two_nodes_through_the_accelerate_config(ct_clip_workdir, ct_clip_single, tmp_path):
    """`accelerate launch --config_file accelerate/multi_node.yaml` on each node, without `--cpu`: with
    it Accelerate 1.15 starts one plain process per machine (README, Running on the real data)."""
    check_two_nodes(CT_CLIP, ct_clip_workdir, tmp_path / "ct_clip-accelerate", ct_clip_single,
                    lambda node, port: multinode.accelerate(ACCELERATE_CONFIG, node, port), kill=False)


# cross_encoder: the smoke data, its tiny bi-encoder (the cross-encoder's start) built without dropout; the
# steps of test_cross_encoder.py's resume test (batch 64 in 2 accumulation steps, 32 per node and step).
CROSS_ENCODER_DATA = ("biencoder.tiny.dropout=0.0",)
CROSS_ENCODER = Case("cross_encoder", (*CROSS_ENCODER_DATA, "train.epochs=0.03", "train.eval_every_epochs=0.015",
                                       "train.log_every_steps=1", "train.early_stopping_patience=0",
                                       "train.tracking.tensorboard=false"), ("",), 4)


def test_cross_encoder_two_nodes(tmp_path_factory):
    work = tmp_path_factory.mktemp("cross_encoder_multinode")
    for stage in ("prepare", "index", "mine"):
        medrepro(["cross_encoder", stage, *CROSS_ENCODER_DATA], work)
    single = single_process(CROSS_ENCODER, work)
    check_two_nodes(CROSS_ENCODER, work, work / "two-nodes", single, torchrun("cross_encoder"), kill=True)


# exmed_bert: test_exmed_bert.py's small data (120 patients, 5 steps an epoch, 20 in all per initialisation),
# the tiny encoder without dropout; masks are keyed by (seed, epoch, patient), not by rank.
EXMED_BERT_DATA = ("data.synthetic_patients=120",)
EXMED_BERT = Case("exmed_bert", (*EXMED_BERT_DATA, "model.dropout=0", "pretrain.train.epochs=4",
                                 "pretrain.train.batch_size=16", "pretrain.train.log_every_steps=1",
                                 "pretrain.train.keep_last=10", "pretrain.train.tracking.mlflow=false",
                                 "pretrain.train.tracking.tensorboard=false"),
                  ("random_init", "clinvec_init"), 2, command="pretrain", out_key="paths.pretrained",
                  train_section="pretrain.train")


def test_exmed_bert_pretraining_two_nodes(tmp_path_factory):
    work = tmp_path_factory.mktemp("exmed_bert_multinode")
    for stage in ("prepare", "clinvec"):
        medrepro(["exmed_bert", stage, *EXMED_BERT_DATA], work)
    singles = single_process(EXMED_BERT, work)
    check_two_nodes(EXMED_BERT, work, work / "two-nodes", singles, torchrun("exmed_bert"), kill=True)
