"""`guided`: the run set up by step-by-step prompts instead of a config file.

Data (synthetic or a patients file), conversion, ClinVec (the vocabulary files found in the chosen
directory, hierarchical initialisation, resize method), model preset and initialisation; each prompt
shows the config's value as its default, and paths are checked as they are typed. Then the full
resolved config is shown for confirmation, written to `--write-config`, and the pipeline runs from
that file (`medrepro exmed_bert smoke --config FILE` repeats the same run without prompts). With no
terminal it stops at once: the config mode is the way to run unattended.
"""

import argparse
import copy
import sys
from collections.abc import Callable
from pathlib import Path

import questionary
import yaml

from experiments.exmed_bert.config import ExMedBertConfig
from experiments.exmed_bert.model import PRESETS
from medrepro import config
from medrepro.errors import ConfigError, MedreproError

CANCELLED = "guided mode cancelled; nothing was written"


def _ask(question: questionary.Question):
    answer = question.ask()
    if answer is None:  # Ctrl-C or end of input
        raise MedreproError(CANCELLED)
    return answer


def _number(kind: type, low: float, high: float | None = None) -> Callable[[str], bool | str]:
    def check(text: str) -> bool | str:
        try:
            value = kind(text)
        except ValueError:
            return f"enter a{'n integer' if kind is int else ' number'}"
        if value < low or (high is not None and value > high):
            return f"enter a value from {low} to {high}" if high is not None else f"enter a value >= {low}"
        return True
    return check


def _existing_file(text: str) -> bool | str:
    return True if Path(text).is_file() else f"{text} is not a file"


def _clinvec_directory(text: str) -> bool | str:
    path = Path(text)
    if not path.is_dir():
        return f"{text} is not a directory"
    if not (path / "ClinGraph_nodes.csv").is_file():
        return f"no ClinGraph_nodes.csv in {text}"
    if not list(path.glob("ClinVec_*.csv")):
        return f"no ClinVec_<vocab>.csv in {text}"
    return True


def detected_vocabularies(directory: Path) -> list[str]:
    return sorted(p.stem.removeprefix("ClinVec_") for p in directory.glob("ClinVec_*.csv"))


def ask_config(cfg: ExMedBertConfig) -> ExMedBertConfig:
    """The prompts, in pipeline order; returns a new config."""
    cfg = copy.deepcopy(cfg)
    data = cfg.data
    data.source = _ask(questionary.select("Data: generate synthetic patients or read a patients JSON file?",
                                          choices=["synthetic", "json"], default=data.source))
    if data.source == "synthetic":
        data.synthetic_patients = int(_ask(questionary.text("Number of synthetic patients:",
                                                            default=str(data.synthetic_patients),
                                                            validate=_number(int, 30))))
        data.novel_code_probability = float(_ask(questionary.text(
            "Share of codes missing from the synthetic ClinVec (novel codes):",
            default=str(data.novel_code_probability), validate=_number(float, 0.0, 1.0))))
        cfg.seed = int(_ask(questionary.text("Seed:", default=str(cfg.seed), validate=_number(int, 0))))
    else:
        data.patients = _ask(questionary.path("Patients JSON file (import format):", default=data.patients,
                                              validate=_existing_file))
        data.on_bad_code = _ask(questionary.select("On an invalid code:", choices=["stop", "drop"],
                                                   default=data.on_bad_code))
    data.max_length = int(_ask(questionary.text("Maximum sequence length (codes and separators):",
                                                default=str(data.max_length), validate=_number(int, 8))))
    data.truncation = _ask(questionary.select("When a patient is longer, keep:", choices=["keep_last", "keep_first"],
                                              default=data.truncation))
    use_synthetic = data.source == "synthetic" and _ask(questionary.confirm(
        "ClinVec: use the synthetic ClinVec files generated with the patients?", default=True))
    if use_synthetic:
        cfg.clinvec.directory = ""
    else:
        directory = _ask(questionary.path("ClinVec directory (ClinVec_<vocab>.csv and ClinGraph_nodes.csv):",
                                          default=cfg.clinvec.directory, only_directories=True,
                                          validate=_clinvec_directory))
        cfg.clinvec.directory = directory
        found = detected_vocabularies(Path(directory))
        cfg.clinvec.vocabularies = _ask(questionary.checkbox(
            "Vocabularies to initialise from:",
            choices=[questionary.Choice(v, checked=v in cfg.clinvec.vocabularies) for v in found],
            validate=lambda chosen: bool(chosen) or "choose at least one"))
    cfg.clinvec.hierarchical = _ask(questionary.confirm(
        "Initialise novel codes from their nearest ancestor (ICD-10-CM, ATC)?", default=cfg.clinvec.hierarchical))
    cfg.clinvec.resize = _ask(questionary.select(
        "Resize ClinVec's 128 dimensions to the model's width by:",
        choices=["auto", "truncate", "pca", "learned_projection", "pad_smart", "pad_random"],
        default=cfg.clinvec.resize))
    cfg.model.preset = _ask(questionary.select(
        "Model size:", choices=[questionary.Choice(f"{p} ({s['layers']} × {s['hidden_size']})", value=p)
                                for p, s in PRESETS.items()], default=cfg.model.preset))
    cfg.model.init = _ask(questionary.select("Weight initialisation:", choices=["xavier", "orthogonal", "kaiming"],
                                             default=cfg.model.init))
    return cfg


def guided(cfg: ExMedBertConfig, args: argparse.Namespace) -> None:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise ConfigError("the guided mode needs a terminal; to run without one use the config mode: "
                          "`medrepro exmed_bert smoke --config FILE` (or --profile smoke|full)")
    resolved = ask_config(cfg)
    out = Path(_ask(questionary.path("Output directory for data, runs and results:", default=str(args.out),
                                     only_directories=True)))
    print("\nThe resolved configuration:\n")
    print(yaml.safe_dump(config.to_plain(resolved), sort_keys=False))
    if not _ask(questionary.confirm(f"Write it to {args.write_config} and run the pipeline in {out}?", default=True)):
        raise MedreproError(CANCELLED)
    config.save_config(resolved, args.write_config)
    # Checked by the same loader as every config file, so what runs is exactly what was written.
    config.load_config(ExMedBertConfig, args.write_config)
    print(f"wrote {args.write_config}; repeat this run with `medrepro exmed_bert smoke --config "
          f"{args.write_config} --out {out}`")
    if args.dry_run:
        return
    from experiments.exmed_bert.experiment import EXPERIMENT
    from medrepro.suite import smoke

    smoke.run(EXPERIMENT, resolved, out, list(EXPERIMENT.variants),
              argparse.Namespace(config=args.write_config.resolve(), profile="smoke", overrides=[]))
