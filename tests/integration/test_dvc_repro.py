"""`dvc repro` in a temporary copy of the repository: runs, is a no-op the second time, lists metrics."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import REPO

pytestmark = pytest.mark.integration


def copy_worktree(dest: Path) -> None:
    """Tracked and untracked-but-not-ignored files: what a fresh clone plus local edits would hold."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"], "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_dvc_repro_twice_then_metrics(tmp_path):
    repo = tmp_path / "repo"
    copy_worktree(repo)
    run(["git", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"], repo)

    first = run(["dvc", "repro"], repo)
    # A clone has dvc.lock but none of the outputs: every stage that makes them must run.
    for stage in ("retclip_prepare", "retclip_lmdb", "retclip_train@pubmedbert", "retclip_evaluate@biobert",
                  "cross_encoder_prepare", "cross_encoder_index", "cross_encoder_mine", "cross_encoder_train",
                  "cross_encoder_evaluate"):
        assert f"Running stage '{stage}'" in first.stdout, stage
    second = run(["dvc", "repro"], repo)
    # Only the image-id stamps run again (they always do); nothing downstream of them changed.
    ran = [line for line in second.stdout.splitlines() if line.startswith("Running stage")]
    assert sorted(ran) == ["Running stage 'cross_encoder_image':", "Running stage 'retclip_image':"], second.stdout
    assert "didn't change, skipping" in second.stdout

    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    flat = json.dumps(shown)
    for encoder in ("pubmedbert", "bert_base", "biobert"):
        assert f"results/retclip/{encoder}/metrics.json" in flat
        metrics = json.loads((repo / "results" / "retclip" / encoder / "metrics.json").read_text())
        # Far above chance (12.5 % for 8 classes): the whole 95 % interval, and balanced accuracy at 2×.
        assert metrics["accuracy_ci_low"] > 0.125, (encoder, metrics["accuracy_ci_low"])
        assert metrics["balanced_accuracy"] > 0.25, (encoder, metrics["balanced_accuracy"])
    assert "results/cross_encoder/sapbert/metrics.json" in flat
    metrics = json.loads((repo / "results" / "cross_encoder" / "sapbert" / "metrics.json").read_text())
    # A classifier answering "match" for every pair has F1 = 2p / (1 + p) at positive rate p (0.2 here).
    trivial = 2 * metrics["positive_rate"] / (1 + metrics["positive_rate"])
    assert metrics["f1_ci_low"] > 2 * trivial, metrics
    table = (repo / "results" / "RESULTS.md").read_text()
    assert table.count("| synthetic |") == 4
