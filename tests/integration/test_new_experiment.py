"""Adding an experiment is adding a directory: a throw-away experiment made by following
experiments/README.md shows up in the command line, nox, the images, the DVC pipeline and the
results table, with no edit anywhere else, and its smoke run goes through the shared pipeline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medrepro.suite.verify import copy_worktree
from tests.integration.conftest import REPO

pytestmark = pytest.mark.integration

TOY = {
    "__init__.py": "",
    "experiment.py": '''
"""toy in the suite."""

from medrepro.suite.spec import Experiment, Stage

EXPERIMENT = Experiment(
    name="toy",
    summary="A throw-away experiment that counts to three",
    config="experiments.toy.config:ToyConfig",
    variants=("small", "large"),
    stages=(Stage("prepare", "write the numbers", "experiments.toy.run:prepare", outs=("paths.prepared",)),),
    train="experiments.toy.run:train",
    evaluate="experiments.toy.run:evaluate",
    bench="experiments.toy.run:bench",
    val_metric="acc",
)
''',
    "config.py": '''
from dataclasses import dataclass, field

from medrepro.config_sections import OutputPaths, RuntimeConfig


@dataclass
class PathsConfig(OutputPaths):
    prepared: str = "data/toy/prepared"


@dataclass
class ToyConfig:
    seed: int = 0
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    count: int = 3
''',
    "run.py": '''
import json
from pathlib import Path

from medrepro import atomic
from medrepro.results import Evaluation


def prepare(cfg, args):
    atomic.write_json(Path(cfg.paths.prepared) / "numbers.json", list(range(cfg.count)))


def train(cfg, variant, run, resume):
    numbers = json.loads((Path(cfg.paths.prepared) / "numbers.json").read_text())
    rows = [{"step": n + 1, "train/loss": 1.0 / (n + 1)} for n in numbers] + [{"step": 3, "val/acc": 1.0}]
    atomic.write_text(run.train_log, "".join(json.dumps(r) + "\\n" for r in rows))
    run.mark_complete(variant, "toy", 3, 3)  # what medrepro.trainer.fit writes last


def evaluate(cfg, variant, run, out_dir, which):
    return Evaluation({"acc": 1.0}, {"accuracy": 1.0}, {"data": "synthetic"})


def bench(cfg, workdir):
    return {"setting": {}, "rates": {}, "ratios": {"ratio": 1.0}, "goals": {"ratio": 1.0}}
''',
    "configs/smoke.yaml": "seed: 0\nruntime: {threads: 1, cpu_kernels: portable}\n",
    "configs/full.yaml": "seed: 0\ncount: 1000\n",
    "reference.yaml": "title: counting\ncolumns:\n  - {metric: accuracy, label: Accuracy}\nreference: {}\nnotes: ''\n",
    "README.md": "# toy\n",
}


def test_a_new_experiment_directory_is_picked_up_everywhere(tmp_path):
    repo = tmp_path / "repo"
    copy_worktree(REPO, repo)
    for name, text in TOY.items():
        (repo / "experiments" / "toy" / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / "experiments" / "toy" / name).write_text(text.lstrip())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo / "shared"), str(repo)]),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def run(*cmd: str, cwd: Path = repo) -> str:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        return proc.stdout

    medrepro = [sys.executable, "-m", "medrepro"]
    assert "toy" in run(*medrepro, "--help") and "counts to three" in run(*medrepro, "--help")
    assert "--variant {small,large}" in run(*medrepro, "toy", "train", "--help")
    sessions = run("nox", "-l")
    assert "smoke(exp='toy')" in sessions and "build(exp='toy')" in sessions and "bench(exp='toy')" in sessions
    # No Dockerfile of its own: the image is built from the one experiment Dockerfile with its name.
    build = run(sys.executable, "-c", "from medrepro.suite import images; "
                                      "print(' '.join(images.build_command('toy', 'os', 'rev')))")
    assert "--file images/experiment/Dockerfile" in build and "EXPERIMENT=toy" in build
    run(*medrepro, "pipeline")
    dvc_yaml = (repo / "dvc.yaml").read_text()
    for stage in ("toy_image:", "toy_prepare:", "toy_train:", "toy_evaluate:", "results/toy/small/details.json"):
        assert stage in dvc_yaml, stage

    out = tmp_path / "smoke"
    run(*medrepro, "toy", "smoke", "--out", str(out))
    assert json.loads((out / "results" / "toy" / "large" / "metrics.json").read_text()) == {"acc": 1.0}
    assert (out / "results" / "toy" / "small" / "curves" / "train.csv").read_text().startswith("step,loss\n1,1.0\n")
    assert "| small | synthetic | 1.000 |" in (out / "results" / "RESULTS.md").read_text()
    bench = out / "bench.json"
    run(*medrepro, "toy", "bench", "--out", str(bench))
    assert json.loads(bench.read_text())["ratios"] == {"ratio": 1.0}
