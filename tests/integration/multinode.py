"""Two nodes on one machine: two launcher agents (torchrun, or `accelerate launch`) started as
subprocesses that meet through a rendezvous on 127.0.0.1, one process each, gloo on the CPU.

Each agent runs in its own session and its own working directory, so that a path a worker resolves
against its node's working directory lands on that node, as on a cluster. Node 0 starts first and
hosts the rendezvous; node 1 starts once node 0 listens on the port.
"""

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.integration.conftest import process_env

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A port on the loopback interface that nothing listens on now (the OS's choice)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def kill_tree(pid: int) -> float:
    """SIGKILL a launcher agent and every process below it, as a lost machine; when, in time.monotonic().

    Its process group is not enough: torchrun starts each worker in a session of its own."""
    tree = [psutil.Process(pid)]
    tree += tree[0].children(recursive=True)
    for proc in tree:
        with contextlib.suppress(psutil.NoSuchProcess):  # a worker that ended meanwhile
            proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    psutil.wait_procs(tree)
    return killed


def loopback_env() -> dict[str, str]:
    """The environment of both agents: gloo and the workers' rank-0 address on the loopback interface.

    gloo otherwise binds the interface the host name resolves to, and torchrun publishes the host's
    name as MASTER_ADDR; PET_LOCAL_ADDR is torchrun's `--local_addr`, which `accelerate launch`
    (whose multi-node launcher is torchrun's) reads as well."""
    return process_env(GLOO_SOCKET_IFNAME="lo", PET_LOCAL_ADDR=LOOPBACK)


def torchrun(node_rank: int, port: int, rdzv_id: str) -> list[str]:
    """One node's torchrun agent of a 2-node c10d rendezvous, one process per node; `-m` follows."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node_rank),
            "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", f"{LOOPBACK}:{port}",
            "--rdzv_id", rdzv_id, "-m"]


def accelerate(config: Path, machine_rank: int, port: int) -> list[str]:
    """One node's `accelerate launch` with a multi-node config, one process per node; `-m` follows."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
            "--machine_rank", str(machine_rank), "--main_process_ip", LOOPBACK, "--main_process_port", str(port),
            "--num_machines", "2", "--num_processes", "2", "-m"]


@dataclass
class NodeResult:
    returncode: int
    stdout: str
    stderr: str
    ended: float  # time.monotonic() when the agent was seen to exit


# A node's launcher command up to the module, from its rank and the rendezvous port.
Launcher = Callable[[int, int], list[str]]


class TwoNodes:
    """Both agents of a launch on a free port, running `medrepro ARGS`; `cwds[i]` is node i's working
    directory, `logs` receives their output. Use as a context manager: whatever still runs at the end is
    killed."""

    def __init__(self, launcher: Launcher, args: Sequence[str], cwds: Sequence[Path], logs: Path,
                 start_timeout_s: float = 120):
        logs.mkdir(parents=True, exist_ok=True)
        self.logs = [(logs / f"node{i}.stdout", logs / f"node{i}.stderr") for i in range(2)]
        self.procs: list[subprocess.Popen] = []
        self._results: dict[int, NodeResult] = {}
        port = free_port()
        self._start(0, launcher(0, port), args, cwds[0])
        self._await_listener(port, start_timeout_s)
        self._start(1, launcher(1, port), args, cwds[1])

    def _start(self, node: int, launcher: list[str], args: Sequence[str], cwd: Path) -> None:
        out, err = self.logs[node]
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            self.procs.append(subprocess.Popen([*launcher, "medrepro", *args], cwd=cwd, env=loopback_env(),
                                               stdout=stdout, stderr=stderr, start_new_session=True))

    def _await_listener(self, port: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.procs[0].poll() is not None:
                raise AssertionError(f"node 0 exited ({self.procs[0].returncode}) before listening on port "
                                     f"{port}:\n{self.tail(0)}")
            with socket.socket() as s:
                if s.connect_ex((LOOPBACK, port)) == 0:
                    return
            if time.monotonic() > deadline:
                self.kill_all()
                raise AssertionError(f"node 0 did not listen on {LOOPBACK}:{port} within {timeout_s:.0f} s")
            time.sleep(0.05)

    def tail(self, node: int, chars: int = 4000) -> str:
        return self.logs[node][1].read_text(errors="replace")[-chars:]

    def running(self, node: int) -> bool:
        return self.procs[node].poll() is None

    def kill(self, node: int) -> float:
        """SIGKILL node `node`'s agent and its workers, as a lost machine; when, in time.monotonic()."""
        return kill_tree(self.procs[node].pid)

    def kill_all(self) -> None:
        for node, proc in enumerate(self.procs):
            if proc.poll() is None:
                self.kill(node)

    def wait_for(self, markers: Sequence[Path], timeout_s: float) -> int:
        """Until one of `markers` exists (a checkpoint file in either node's directory), the index of the
        first that does; fails if a node exits first or time runs out."""
        deadline = time.monotonic() + timeout_s
        while not any(marker.exists() for marker in markers):
            for node in range(len(self.procs)):
                assert self.running(node), f"node {node} ended before {markers[0].name} appeared:\n{self.tail(node)}"
            assert time.monotonic() < deadline, f"no {markers[0].name} within {timeout_s:.0f} s"
            time.sleep(0.02)
        return next(i for i, marker in enumerate(markers) if marker.exists())

    def wait(self, timeout_s: float, nodes: Sequence[int] = (0, 1)) -> list[NodeResult]:
        """Wait for `nodes` to exit; kills everything and fails if any still runs after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while any(node not in self._results for node in nodes):
            for node in nodes:
                if node not in self._results and self.procs[node].poll() is not None:
                    out, err = self.logs[node]
                    self._results[node] = NodeResult(self.procs[node].returncode, out.read_text(errors="replace"),
                                                     err.read_text(errors="replace"), time.monotonic())
            if time.monotonic() > deadline:
                late = [node for node in nodes if node not in self._results]
                self.kill_all()
                raise AssertionError(f"node(s) {late} still running after {timeout_s:.0f} s; killed:\n"
                                     + "\n".join(self.tail(node) for node in late))
            time.sleep(0.05)
        return [self._results[node] for node in nodes]

    def __enter__(self) -> "TwoNodes":
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill_all()
