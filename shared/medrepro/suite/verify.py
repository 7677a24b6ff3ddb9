"""`medrepro verify`: do the committed smoke results come back, bit for bit?

The work tree as git would clone it (tracked files plus untracked ones that are not ignored) is
copied into a scratch directory, its results/ removed, and `dvc repro` runs the whole smoke pipeline
there; the user's own data, runs and results are never touched. Every committed file under results/,
and dvc.lock (the hashes of every stage's inputs and outputs), is then compared byte for byte with
its reproduction, so a fresh clone's `dvc repro` is known to leave `git status` clean. Differences
are printed as a table (file, metric, committed, reproduced) and the command exits 1.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from medrepro.config import flatten
from medrepro.errors import MedreproError
from medrepro.suite import registry


def worktree_files(repo: Path) -> list[str]:
    """What a clone plus the local, not-ignored changes holds."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                         check=True, capture_output=True).stdout.decode()
    return [name for name in out.split("\0") if name and (repo / name).is_file()]


def copy_worktree(repo: Path, dest: Path) -> None:
    for name in worktree_files(repo):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, dest / name)


def _run(cmd: list[str], cwd: Path) -> None:
    # The copy's own code runs, not the installed one: the stages' dependencies are then the files executed.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join([str(cwd / "shared"), str(cwd), os.environ.get("PYTHONPATH", "")])}
    print("verify: " + " ".join(cmd), file=sys.stderr, flush=True)
    if subprocess.run(cmd, cwd=cwd, env=env).returncode != 0:
        raise MedreproError(f"`{' '.join(cmd)}` failed in {cwd}")


def reproduce(repo: Path, workdir: Path) -> None:
    """Copy the work tree into `workdir` and run the smoke pipeline there from a clean state."""
    profile = yaml.safe_load((repo / "params.yaml").read_text()).get("profile")
    if profile != "smoke":
        raise MedreproError(f"params.yaml has profile {profile!r}: the committed golden numbers are the smoke "
                            "profile's; set `profile: smoke` to verify them")
    if workdir.exists() and any(workdir.iterdir()):
        raise MedreproError(f"{workdir} is not empty: give verify an empty or new directory")
    copy_worktree(repo, workdir)
    shutil.rmtree(workdir / "results", ignore_errors=True)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=medrepro", "-c", "user.email=verify@localhost", "commit", "-qm", "copy"]):
        _run(cmd, workdir)
    _run(["dvc", "repro"], workdir)


def _keyed(value: object) -> object:
    """Lists → mappings, so that `flatten` reaches inside them; list entries with a `path` (dvc.lock's
    deps and outs) are keyed by it, others by position."""
    if isinstance(value, list):
        return {item["path"] if isinstance(item, dict) and "path" in item else str(i): _keyed(item)
                for i, item in enumerate(value)}
    if isinstance(value, dict):
        return {key: _keyed(item) for key, item in value.items()}
    return value


def differences(committed_root: Path, reproduced_root: Path, files: Sequence[str]) -> list[tuple[str, str, str, str]]:
    """(file, metric, committed, reproduced) for every difference; JSON files are compared key by key."""
    rows = []
    for name in files:
        old, new = committed_root / name, reproduced_root / name
        if not new.is_file():
            rows.append((name, "(file)", "present", "missing"))
            continue
        if old.read_bytes() == new.read_bytes():
            continue
        if name.endswith((".json", ".lock", ".yaml")):
            # JSON is YAML; dvc.lock is YAML.
            a, b = (flatten(_keyed(yaml.safe_load(f.read_text()))) for f in (old, new))
            changed = [(k, repr(a.get(k, "—")), repr(b.get(k, "—"))) for k in sorted(set(a) | set(b))
                       if a.get(k, "—") != b.get(k, "—")]
            rows += [(name, *row) for row in changed] or [(name, "(formatting)", "", "")]
        else:
            rows.append((name, "(bytes)", f"{old.stat().st_size} B", f"{new.stat().st_size} B"))
    return rows


def table(rows: Sequence[tuple[str, str, str, str]], per_file: int = 10) -> str:
    """The rows as an aligned table, at most `per_file` rows per file plus a line counting the rest."""
    shown: list[tuple[str, str, str, str]] = []
    for name in dict.fromkeys(r[0] for r in rows):
        mine = [r for r in rows if r[0] == name]
        shown += mine[:per_file]
        if len(mine) > per_file:
            shown.append((name, f"(and {len(mine) - per_file} more)", "", ""))
    rows = shown
    header = ("file", "metric", "committed", "reproduced")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="medrepro verify", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path,
                        help="where to reproduce (kept afterwards); default: a temporary directory, removed")
    args = parser.parse_args(argv)
    repo = registry.repo_root()
    committed = sorted(name for name in worktree_files(repo) if name.startswith("results/") or name == "dvc.lock")
    if not committed:
        raise MedreproError("no committed results/ to verify: run `./dev repro` and commit its results first")

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medrepro-verify-") as tmp:
        workdir = args.workdir or Path(tmp)
        reproduce(repo, workdir)
        rows = differences(repo, workdir, committed)
    minutes = (time.perf_counter() - t0) / 60
    if rows:
        print(table(rows))
        print(f"verify: {len(rows)} difference(s) in {len({r[0] for r in rows})} of {len(committed)} committed "
              f"result files ({minutes:.1f} min)", file=sys.stderr)
        return 1
    print(f"verify: all {len(committed)} committed result files reproduced bit for bit ({minutes:.1f} min)")
    return 0
