"""The golden numbers: the whole smoke pipeline, reproduced from scratch by `medrepro verify` (the
`reproduced` fixture), gives every committed result file bit for bit, and the DVC pipeline around it
behaves: stages read only what they depend on, a second `dvc repro` does nothing, `dvc metrics show`
fits a terminal and `dvc plots show` charts the training curves."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration


def dvc(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join([str(cwd / "shared"), str(cwd)])}
    proc = subprocess.run(["dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_committed_results_come_back_bit_for_bit(reproduced):
    # The table of differences is the end of stdout: keep it last, where a shortened log still shows it.
    assert reproduced.verify.returncode == 0, reproduced.verify.stderr[-2000:] + reproduced.verify.stdout[-6000:]
    assert "reproduced bit for bit" in reproduced.verify.stdout


def test_a_second_repro_does_nothing(reproduced):
    second = dvc(["repro"], reproduced.workdir)
    ran = sorted(line for line in second.stdout.splitlines() if line.startswith("Running stage"))
    # Only the image-id stamps run again (they always do); nothing downstream of them changed.
    assert all(re.fullmatch(r"Running stage '\w+_image':", line) for line in ran), second.stdout
    assert "didn't change, skipping" in second.stdout


def test_metrics_show_fits_a_terminal_and_lists_every_variant(reproduced):
    shown = dvc(["metrics", "show"], reproduced.workdir).stdout
    assert max(len(line) for line in shown.splitlines()) <= 160, shown
    lock = yaml.safe_load((reproduced.workdir / "dvc.lock").read_text())
    metrics = [m["path"] for stage in lock["stages"].values() for m in stage.get("outs", [])
               if m["path"].endswith("/metrics.json")]
    assert metrics and all(path in shown for path in metrics)


def test_plots_show_charts_the_training_curves(reproduced):
    out = dvc(["plots", "show", "--json"], reproduced.workdir).stdout
    titles = json.dumps(json.loads(out))
    for experiment in ("retclip", "cross_encoder"):
        assert f"{experiment}: training loss" in titles and f"{experiment}: validation" in titles


def _stage_of(argv: list[str], commands: dict[str, str]) -> str | None:
    after = next((i for i, a in enumerate(argv) if a == "medrepro" or a.endswith("/medrepro")), None)
    return None if after is None else commands.get(" ".join(argv[after + 1:]))


def _under(path: str, roots: list[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _final_name(path: str) -> str:
    """An atomic write's temporary name (`.name.XXXX.tmp`, `.name.old`) → the name it becomes."""
    return "/".join(re.sub(r"^\.(.+?)\.(\w+\.tmp|old)$", r"\1", part) for part in path.split("/"))


def test_every_stage_reads_only_its_dependencies_and_writes_only_its_outputs(reproduced):
    """Every source, config and data file a stage's process imported or opened is among the stage's
    DVC dependencies, and every file it wrote is among its outputs; so no change can leave a stale
    result behind. The trace covers every medrepro process of the verify run."""
    work = reproduced.workdir
    lock = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    # Stages that run every time (the image-id stamps) cannot go stale.
    always = {name for name, stage in yaml.safe_load((work / "dvc.yaml").read_text())["stages"].items()
              if stage.get("always_changed")}
    commands = {stage["cmd"].removeprefix("medrepro "): name for name, stage in lock.items() if name not in always}
    problems, seen = [], set()
    for record_file in reproduced.trace_dir.glob("*.json"):
        record = json.loads(record_file.read_text())
        stage = _stage_of(record["argv"], commands)
        if stage is None:
            continue
        seen.add(stage)
        deps = [d["path"] for d in lock[stage].get("deps", [])]
        outs = [o["path"] for o in lock[stage].get("outs", [])]
        cwd = Path(record["cwd"])
        read = set(record["modules"]) | {p for p, mode in record["opened"].items() if not set(mode) & set("wax+")}
        written = {p for p, mode in record["opened"].items() if set(mode) & set("wax+")}
        for kind, paths in (("read", read), ("wrote", written)):
            for path in paths:
                full = (cwd / path).resolve()
                # Directories are opened to fsync them after a rename, not read.
                if not full.is_relative_to(work.resolve()) or full.is_dir():
                    continue
                rel = _final_name(full.relative_to(work.resolve()).as_posix())
                # Locks (.lock, .<name>.lock) are held while writing and ignored by git and DVC.
                if rel.startswith((".dvc/", ".git/")) or "__pycache__" in rel or rel.endswith(".lock"):
                    continue
                # An experiment's MLflow store (runs/<experiment>/mlruns) is shared by all its runs, as a
                # tracking server would be: an observer of the stages, outside DVC, which neither caches it
                # nor restores it.
                if rel.startswith("runs/") and rel.split("/")[2:3] == ["mlruns"]:
                    continue
                if kind == "read" and rel.startswith(("experiments/", "shared/", "data/", "runs/", "results/")) \
                        and not _under(rel, deps + outs):
                    problems.append(f"{stage} reads {rel}, which is not among its deps")
                if kind == "wrote" and not _under(rel, outs):
                    problems.append(f"{stage} writes {rel}, which is not among its outs")
    assert not problems, "\n".join(sorted(set(problems)))
    expected = {name for name in lock if name not in always and name != "report"}
    assert expected <= seen, f"no trace of {sorted(expected - seen)}"

