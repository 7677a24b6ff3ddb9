"""Every command of every experiment against a table of user mistakes: one line on stderr, exit 2,
nothing written.

The table is data built from the experiments' declarations (`medrepro.suite.registry`): a new
experiment, stage or command gets its rows without an edit here. The classes: an unknown key, a
wrong type, an out-of-range value, an output that is an existing file (or, for a file output, a
directory), an output where nothing can be written, an earlier stage's output missing, and inputs
that are missing, empty or cut short. Each case runs the real command line in-process, in an
empty working directory, and most end before torch is imported.
"""

import argparse
import ast
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from medrepro import config, run_guard
from medrepro.suite import registry
from medrepro.suite.cli import TOOLS, main
from medrepro.suite.commands import build_parser
from medrepro.suite.spec import Experiment

REPO = Path(__file__).resolve().parents[2]
# A directory nobody can create files in, root included (sysfs is read-only to file creation).
UNWRITABLE = "/sys/medrepro-user-errors"
FILE = "a-file-of-the-user"

# One setting per experiment outside its range; the message must name the key.
OUT_OF_RANGE = {
    "retclip": "train.batch_size=0",
    "cross_encoder": "train.lr=0",
    "ct_clip": "train.epochs=0",
    "exmed_bert": "baselines.xgb_trees=0",
    "biomedica_clip": "data.upsampling=1::x",
}


# The full profile's first stage where the real dataset is absent (it is at /data in the images; no CI
# machine has it). biomedica_clip reads its shards where they lie, in `verify`, not in `prepare`.
REAL_DATA_MISSING = {
    "retclip": "no ODIR-5K dataset under /data/odir",
    "cross_encoder": "no corpus_pubtator.txt(.gz) in /data/medmentions",
    "ct_clip": "point data.ctrate_root at the CT-RATE directory",
    "exmed_bert": "patients file /data/exmed_bert/patients.json not found",
}


@dataclass
class Case:
    argv: list[str]
    expect: str  # a fragment of the one line
    setup: Callable[[Path], None] = field(default=lambda root: None)


def _user_file(root: Path) -> None:
    (root / FILE).write_text("the user's own file\n")


def _user_dir(root: Path) -> None:
    (root / FILE).mkdir()


def _commands(experiment: Experiment) -> dict[str, list[str]]:
    """Each command with the arguments it needs to get past argparse."""
    variant = ["--variant", experiment.variants[0]]
    commands = {stage.name: [stage.name] for stage in experiment.stages}
    commands |= {"train": ["train", *variant], "evaluate": ["evaluate", *variant], "smoke": ["smoke"],
                 "bench": ["bench"]}
    for command in experiment.commands:
        commands[command.name] = [command.name, *_required(experiment, command.name)]
    if experiment.dryrun:
        commands["dryrun"] = ["dryrun", "--quick"]
    return commands


def _required(experiment: Experiment, name: str) -> list[str]:
    """The required options of an experiment's own command, filled with harmless values (a path named
    after the option, or its first choice)."""
    command = next(c for c in experiment.commands if c.name == name)
    parser = argparse.ArgumentParser()
    if command.arguments is not None:
        command.arguments(parser)
    argv = []
    for action in parser._actions:
        if action.required and action.option_strings:
            argv += [action.option_strings[0], action.choices[0] if action.choices else action.dest]
    return argv


def _outputs(experiment: Experiment) -> list[tuple[str, list[str], str, str]]:
    """(command, argv that points one output at PATH, the flag or key named, "dir" or "file")."""
    found = []
    for stage in experiment.stages:
        found += [(stage.name, [stage.name, f"{key}=PATH"], key, "dir") for key in stage.outs]
    variant = ["--variant", experiment.variants[0]]
    found += [("train", ["train", *variant, "--out", "PATH"], "--out", "dir"),
              ("evaluate", ["evaluate", *variant, "--out", "PATH"], "--out", "dir"),
              ("smoke", ["smoke", "--out", "PATH"], "--out", "dir"),
              ("bench", ["bench", "--out", "PATH"], "--out", "file")]
    if experiment.dryrun:
        found.append(("dryrun", ["dryrun", "--quick", "--out", "PATH"], "--out", "dir"))
    for command in experiment.commands:
        for dest, kind in command.writes.items():
            flag = "--" + dest.replace("_", "-")
            argv = [command.name, *_required(experiment, command.name)]
            if flag in argv:
                argv[argv.index(flag) + 1] = "PATH"
            else:
                argv += [flag, "PATH"]
            found.append((command.name, argv, flag, kind))
    return found


def _cases() -> dict[str, Case]:
    cases: dict[str, Case] = {}
    for experiment in registry.all_experiments():
        name = experiment.name
        for command, argv in _commands(experiment).items():
            if command in ("dryrun",):
                continue  # its overrides apply over the dry run's own; its outputs are below
            cases[f"{name}-{command}-unknown-key"] = Case([name, *argv, "no_such_section.key=1"], "no_such_section")
            cases[f"{name}-{command}-wrong-type"] = Case([name, *argv, "seed=twelve"], "seed")
            cases[f"{name}-{command}-out-of-range"] = Case([name, *argv, OUT_OF_RANGE[name]],
                                                           OUT_OF_RANGE[name].split("=")[0].split(".")[-1])
        for command, argv, flag, kind in _outputs(experiment):
            existing = _user_dir if kind == "file" else _user_file
            shape = "a directory, not a file" if kind == "file" else "a file, not a directory"
            cases[f"{name}-{command}-{flag}-existing-{'dir' if kind == 'file' else 'file'}"] = Case(
                [name, *(a.replace("PATH", FILE) for a in argv)], f"{FILE} ({flag}) is {shape}", existing)
            cases[f"{name}-{command}-{flag}-unwritable"] = Case(
                [name, *(a.replace("PATH", f"{UNWRITABLE}/out") for a in argv)], "cannot write in /sys")
        if name in REAL_DATA_MISSING:
            cases[f"{name}-prepare-full-without-the-dataset"] = Case(
                [name, experiment.stages[0].name, "--profile", "full"], REAL_DATA_MISSING[name])
        # Nothing prepared yet: every command that reads an earlier stage's output names that stage.
        first = experiment.stages[0]
        for stage in experiment.stages[1:]:
            if stage.deps:
                cases[f"{name}-{stage.name}-before-its-inputs"] = Case(
                    [name, stage.name], f"not found: run `medrepro {name} ")
        for command in ("train", "evaluate"):
            argv = _commands(experiment)[command]
            expect = (f"not found: run `medrepro {name} {first.name}` first" if command == "train"
                      else "holds no finished run")
            cases[f"{name}-{command}-before-prepare"] = Case([name, *argv], expect)
    return cases


CASES = _cases()


def _snapshot(root: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_user_error_is_one_line_exit_2_and_writes_nothing(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    case.setup(tmp_path)
    before = _snapshot(tmp_path)
    code = main(case.argv)
    err = capsys.readouterr().err
    assert code == 2, f"exit {code}: {err}"
    assert err.startswith("medrepro: error: ") and err.count("\n") == 1, err
    assert case.expect in err, err
    assert _snapshot(tmp_path) == before, "the failed command wrote into the working directory"
    for hint in HINT.findall(err):
        check_hint(hint)


HINT = re.compile(r"`medrepro ([^`]+)`")


def check_hint(hint: str) -> None:
    """A command a message tells the user to run exists, with every flag it names."""
    words = shlex.split(hint)
    if words[0] in TOOLS:
        return
    assert words[0] in registry.names(), f"`medrepro {hint}`: no experiment {words[0]!r}"
    if len(words) == 1:
        return  # the experiment's command line as a whole
    parser = build_parser(registry.get(words[0]))
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert words[1] in subcommands, f"`medrepro {hint}`: {words[0]} has no command {words[1]!r}"
    flags = subcommands[words[1]]._option_string_actions
    for word in words[2:]:
        if word.startswith("--"):
            assert word in flags, f"`medrepro {hint}`: {words[1]} has no option {word}"


def test_the_table_covers_every_command_of_every_experiment():
    for experiment in registry.all_experiments():
        for command in _commands(experiment):
            if command != "dryrun":
                assert f"{experiment.name}-{command}-unknown-key" in CASES
        for command, _, flag, _ in _outputs(experiment):
            assert f"{experiment.name}-{command}-{flag}-unwritable" in CASES
    assert len(CASES) > 150, len(CASES)


def test_exmed_patients_files_that_are_empty_cut_short_or_wrapped(tmp_path, monkeypatch, capsys):
    """Inputs of the real-data path: empty, interrupted mid-write, and a list inside an object."""
    monkeypatch.chdir(tmp_path)
    patient = {"patient_id": "P1", "birth_year": 1950, "sex": "F", "state": "CA", "index_date": "2021-01-01",
               "diagnoses": [{"code": "E11.9", "date": "2020-01-01"}], "endpoint": 0}
    files = {"empty.json": "", "cut.json": json.dumps([patient, patient])[:-40],
             "wrapped.json": json.dumps({"patients": [patient]})}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        before = _snapshot(tmp_path)
        code = main(["exmed_bert", "prepare", "--profile", "full", f"data.patients={name}",
                     f"paths.prepared={tmp_path / 'dataset'}"])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("medrepro: error: ") and err.count("\n") == 1, (name, err)
        assert name in err, err
        assert _snapshot(tmp_path) == before, name


def test_a_run_directory_in_use_is_refused_before_torch_loads(tmp_path):
    """The training takes the run's lock only after building its model and data (ct_clip: 15 s); the
    command line refuses a held lock first, in a process that has not imported torch."""
    run_dir = tmp_path / "run"
    probe = ("import sys; from medrepro.suite.cli import main; code = main(sys.argv[1:]); "
             "print('torch imported' if 'torch' in sys.modules else 'torch not imported'); sys.exit(code)")
    with run_guard.exclusive(run_dir):
        proc = subprocess.run([sys.executable, "-c", probe, "ct_clip", "train", "--out", str(run_dir)],
                              cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"medrepro: error: {run_dir} is in use by pid {os.getpid()}: wait for it to finish, or " \
                          "choose another run directory\n"
    assert proc.stdout.strip() == "torch not imported"


def test_a_training_refused_after_taking_the_lock_leaves_nothing(tmp_path, monkeypatch, capsys):
    """biomedica_clip's training takes the run's lock before it reads the shards: with the earlier
    stages' directories present but empty, it is refused there, and the lock goes with it."""
    monkeypatch.chdir(tmp_path)
    experiment = registry.get("biomedica_clip")
    defaults = experiment.config_class()()
    for key in (key for stage in experiment.stages for key in stage.outs):
        Path(config.lookup(defaults, key)).mkdir(parents=True)
    before = _snapshot(tmp_path)
    assert main(["biomedica_clip", "train"]) == 2
    assert "no shards in" in capsys.readouterr().err
    assert _snapshot(tmp_path) == before


def _strings(path: Path) -> list[str]:
    """Every string of a source file as written, adjacent literals joined, an f-string's fields as {X}."""
    texts = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.JoinedStr):
            texts.append("".join(v.value if isinstance(v, ast.Constant) else "{X}" for v in node.values))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            texts.append(node.value)
    return texts


def test_every_command_a_message_names_exists_with_its_flags():
    """The `medrepro ...` commands written in the sources' messages, placeholders filled in."""
    found = 0
    for path in [*(REPO / "shared" / "medrepro").rglob("*.py"), *(REPO / "experiments").rglob("*.py")]:
        for hint in (h for text in _strings(path) for h in HINT.findall(text)):
            if "<" in hint or "NAME" in hint or "..." in hint or (hint.startswith("{X}") and " " not in hint):
                continue  # usage text or a whole command line passed through, not a hint
            names = registry.names() if hint.startswith("{X}") else [hint.split()[0]]
            for name in names:
                check_hint(hint.replace("{X}", name, 1).replace("{X}", "X"))
                found += 1
    assert found > 30, found
