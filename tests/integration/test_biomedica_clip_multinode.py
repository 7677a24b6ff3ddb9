"""biomedica_clip on two nodes, on one machine: two torchrun agents of one process each, a c10d rendezvous on
127.0.0.1 and gloo on the CPU, each running the README's "Several nodes" commands (open_clip_train with the
arguments `train` recorded). Both ranks join one group, each epoch's shards are split between them (every
shard read once an epoch), only global rank 0 writes logs and checkpoints, and the weights are those of the
one-node two-process launch bit for bit. After node 1 is killed, node 0 fails instead of waiting out the collective
timeout (its gloo peer's sockets close; 3.5 s measured) and `--resume latest` on both nodes finishes with the same
weights."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from experiments.biomedica_clip.config import checkpoint_path
from tests.integration import multinode
from tests.integration.conftest import BIOMEDICA_TRAIN, REPO, medrepro, open_clip_weights, process_env, whole_zip

pytestmark = pytest.mark.integration

# 4 shards of 32 samples, 2 epochs, 2 processes × 16: every rank reads 2 whole shards an epoch.
TRAIN = [*BIOMEDICA_TRAIN, "train.dataset_type=webdataset", "train.processes=2", "train.batch_size=16"]
EPOCHS, SHARDS, WORLD = 2, 4, 2

# One node of the README's "Several nodes": the recorded arguments after the entry point, then torchrun
# with a c10d rendezvous at $HEAD ($PORT and $JOB for the loopback's fresh port and rendezvous id).
NODE = """
ARGS=$(python -c "import json; c = json.load(open('open_clip_args.json'))['command']; \\
  print(' '.join(c[c.index('experiments.biomedica_clip.open_clip_compat') + 1:]))")
exec torchrun --nnodes 2 --nproc_per_node 1 --rdzv_backend c10d --rdzv_endpoint "$HEAD:$PORT" \\
  --rdzv_id "$JOB" -m experiments.biomedica_clip.open_clip_compat $ARGS "$@"
"""
# Far below torch's 30-minute gloo collective timeout, far above a loaded CI machine's seconds.
FAILS_WITHIN_S = 300
_PROCESS = re.compile(r"Running in distributed mode .*Process \(global: (\d+), local (\d+)\), total (\d+)")
_OPENED = re.compile(r"^GOPEN (\S+)", re.MULTILINE)  # webdataset's GOPEN_VERBOSE: each file it opens


def same_bits(a: Path, b: Path) -> list[str]:
    """The tensors that differ between two checkpoints (none when they are equal bit for bit)."""
    x, y = open_clip_weights(a), open_clip_weights(b)
    assert x.keys() == y.keys()
    return [k for k in x if not torch.equal(x[k], y[k])]


def listening(port: int) -> bool:
    """Whether a socket listens on `port` (read from the kernel's tables: no connection to it)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                return True
    return False


class Node:
    """One node: a torchrun agent started by the README's commands in `run_dir`, its console in `log`."""

    def __init__(self, run_dir: Path, log: Path, port: int, job: str, pins: dict[str, str], *extra: str):
        self.log = log
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
        pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        env = process_env(**pins, HEAD="127.0.0.1", PORT=str(port), JOB=job, GOPEN_VERBOSE="1",
                          PATH=path, PYTHONPATH=pythonpath)
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(["bash", "-c", NODE, "node", *extra], cwd=run_dir, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def rank(self) -> int:
        found = _PROCESS.findall(self.text())
        assert len(found) == 1, f"{self.log.name}: no single 'Running in distributed mode' line\n{self.text()[-3000:]}"
        rank, local, total = map(int, found[0])
        assert local == 0 and total == WORLD, found
        return rank

    def training_shards(self) -> list[str]:
        """The training shards this node's rank opened, in order (the held-out shard is validation's)."""
        return [Path(url).name for url in _OPENED.findall(self.text()) if Path(url).parent.name == "train"]

    def finish(self, timeout_s: float = 600) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.log.name}: still running after {timeout_s:.0f} s\n{self.text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the node, as a lost machine: the agent and its worker, which torchrun starts in a
        session of its own (killing the agent's group alone leaves the worker training)."""
        if self.proc.poll() is not None:
            return
        multinode.kill_tree(self.proc.pid)
        self.proc.wait()


def start_two_nodes(dirs: tuple[Path, Path], pins: dict[str, str], tag: str, *extra: str) -> tuple[Node, Node]:
    """Node 0 first, so that it hosts the rendezvous as $HEAD does (on loopback both agents could)."""
    port = multinode.free_port()
    job = f"biomedica-{tag}-{port}"
    first = Node(dirs[0], dirs[0].parent / f"{tag}-node0.log", port, job, pins, *extra)
    deadline = time.monotonic() + 120
    while not listening(port):
        assert first.proc.poll() is None, f"node 0 ended before its rendezvous was up:\n{first.text()[-3000:]}"
        assert time.monotonic() < deadline, f"node 0's rendezvous never listened on 127.0.0.1:{port}"
        time.sleep(0.05)
    return first, Node(dirs[1], dirs[1].parent / f"{tag}-node1.log", port, job, pins, *extra)


@pytest.fixture(scope="module")
def one_node(biomedica_workdir: Path) -> Path:
    """`train` on one node with two processes (torchrun --standalone): the arguments the README's nodes run,
    recorded in open_clip_args.json, and the weights two nodes must reproduce."""
    run = biomedica_workdir / "runs" / "nodes-one-node"
    medrepro(["biomedica_clip", "train", "--out", str(run), *TRAIN], biomedica_workdir)
    return run


def node_dir(one_node: Path, name: str) -> Path:
    """A run directory beside the recorded one (its arguments' paths are relative to that depth), holding a
    copy of open_clip_args.json, as the README tells users."""
    run = one_node.parent / name
    run.mkdir()
    shutil.copy(one_node / "open_clip_args.json", run)
    return run


def pins(one_node: Path) -> dict[str, str]:
    """The runtime pins `train` gave its trainer (threads, CPU kernels), which the manifest records."""
    return json.loads((one_node / "manifest.json").read_text())["runtime"]["env"]


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    """Every node a test starts; any left running when it ends (a failed assertion) is killed."""
    started: list[Node] = []
    yield started
    for node in started:
        node.kill()


def test_two_nodes_form_one_group_split_each_epochs_shards_and_train_the_one_node_bits(one_node, nodes):
    # Node 1 in a directory of its own: training shares nothing but the data (only rank 0 writes).
    dirs = (node_dir(one_node, "nodes-0"), node_dir(one_node, "nodes-1"))
    nodes += start_two_nodes(dirs, pins(one_node), "whole")
    for node in nodes:
        assert node.finish() == 0, node.text()[-3000:]
    by_rank = {node.rank(): (node, run) for node, run in zip(nodes, dirs, strict=True)}
    assert sorted(by_rank) == [0, 1]

    # detshuffle2 orders the shards by seed + epoch alike on every rank, split_by_node deals them out by rank:
    # an epoch's shards are disjoint between the ranks and together all of them.
    opened = {rank: node.training_shards() for rank, (node, _) in by_rank.items()}
    per_rank = SHARDS // WORLD
    assert [len(o) for o in opened.values()] == [EPOCHS * per_rank] * WORLD, opened
    for epoch in range(EPOCHS):
        zero, one = (set(opened[r][epoch * per_rank:(epoch + 1) * per_rank]) for r in (0, 1))
        assert not zero & one and len(zero | one) == SHARDS, (epoch, opened)

    written, reader = by_rank[0][1], by_rank[1][1]
    assert sorted(p.name for p in (written / "logs" / "open_clip" / "checkpoints").glob("*.pt")) == [
        f"epoch_{e}.pt" for e in range(1, EPOCHS + 1)]
    assert sorted(p.name for p in reader.iterdir()) == ["open_clip_args.json"]
    assert same_bits(checkpoint_path(written, EPOCHS), checkpoint_path(one_node, EPOCHS)) == []


def test_a_lost_node_stops_the_other_in_seconds_and_both_resume_to_the_one_node_bits(one_node, nodes):
    run = node_dir(one_node, "nodes-killed")  # one directory for both nodes: a shared file system
    nodes += start_two_nodes((run, run), pins(one_node), "killed")
    deadline = time.monotonic() + 600
    while not whole_zip(checkpoint_path(run, 1)):
        assert all(n.proc.poll() is None for n in nodes), "training ended before node 1 could be killed"
        assert time.monotonic() < deadline, "no epoch_1.pt within 600 s"
        time.sleep(0.05)
    lost = next(node for node in nodes if node.rank() == 1)
    survivor = next(node for node in nodes if node is not lost)
    killed_at = time.monotonic()
    lost.kill()
    try:
        code = survivor.proc.wait(timeout=FAILS_WITHIN_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"node 0 still running {FAILS_WITHIN_S} s after node 1 died: it waits out the collective "
                    "timeout (30 min with gloo)")
    seconds = time.monotonic() - killed_at
    assert code != 0, survivor.text()[-3000:]
    assert not checkpoint_path(run, EPOCHS).exists()
    print(f"node 0 failed {seconds:.1f} s after node 1 was killed")

    nodes += start_two_nodes((run, run), pins(one_node), "resumed", "--resume", "latest")
    for node in nodes[2:]:
        assert node.finish() == 0, node.text()[-3000:]
        # Every rank loads the checkpoint rank 0 found: it must see logs/ (a shared file system).
        assert "checkpoints/epoch_1.pt' (epoch 1)" in node.text()
    assert same_bits(checkpoint_path(run, EPOCHS), checkpoint_path(one_node, EPOCHS)) == []
