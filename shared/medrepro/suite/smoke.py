"""`medrepro <experiment> smoke`: the experiment's DVC stages, run in order into one directory.

Each stage runs as its own `python -m medrepro ...` process with the output directory as its working
directory, exactly as DVC runs it from the repository root: the same commands, the same relative
paths, and no change to this process's working directory.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from medrepro.errors import MedreproError
from medrepro.rundir import RunDir
from medrepro.suite.pipeline import pipeline_commands
from medrepro.suite.spec import Experiment


def run(experiment: Experiment, cfg: Any, out: Path, variants: list[str], args: argparse.Namespace) -> None:
    """`cfg` is the config the command resolved (its paths say where an interrupted run's checkpoints are)."""
    unknown = sorted(set(variants) - set(experiment.variants))
    if unknown:
        raise MedreproError(f"--variants: {experiment.name} has no variant {unknown[0]!r} "
                            f"(it has {', '.join(experiment.variants)})")
    config_args = ["--config", str(args.config.resolve())] if args.config else ["--profile", args.profile]
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for argv in pipeline_commands(experiment, variants):
        run = RunDir(out / cfg.paths.runs / argv[-1])
        # A run's checkpoints, or those of its sub-runs (one per training seed, e.g.).
        if argv[0] == "train" and any(r.step_checkpoints() for r in (run, *map(RunDir, run.path.glob("*/")))):
            argv = [*argv, "--resume", "latest"]  # an interrupted smoke run continues where it stopped
        command = [experiment.name, *argv, *config_args, *args.overrides]
        _medrepro(command, out)
    _medrepro(["report", "--results", "results", "--experiments", experiment.name], out)
    print(f"smoke: finished in {time.perf_counter() - t0:.0f}s; results in {out.resolve() / 'results'}",
          file=sys.stderr)


def _medrepro(command: list[str], cwd: Path) -> None:
    print(f"smoke: medrepro {' '.join(command)}", file=sys.stderr, flush=True)
    code = subprocess.run([sys.executable, "-m", "medrepro", *command], cwd=cwd).returncode
    if code != 0:
        raise MedreproError(f"`medrepro {' '.join(command)}` failed with exit status {code} (in {cwd})")

