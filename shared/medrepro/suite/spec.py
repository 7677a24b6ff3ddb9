"""What an experiment declares in `experiments/<name>/experiment.py`: its commands and pipeline.

Everything else is derived from this declaration: the `medrepro <name> ...` command line, the DVC
stages, the smoke run, the nox sessions, the image list and the results table. Functions are named
as "module:function" strings so that reading a declaration imports nothing heavy.
"""

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def resolve(target: str) -> Any:
    """"package.module:attribute" → the attribute."""
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class Command:
    """A command of the experiment's command line, called as `function(cfg, args)`."""

    name: str
    help: str
    run: str
    # Adds the command's own options to its argparse parser.
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    # Those options that name what the command writes: argparse dest → "dir" or "file", checked before
    # any work (`medrepro.preflight`).
    writes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage(Command):
    """A data stage of the pipeline: runs once per profile, before training, and writes `outs`.

    `outs` and `deps` name config keys (e.g. "paths.lmdb") whose default values are the paths, so
    the paths are written once, in the config.
    """

    outs: tuple[str, ...] = ()
    deps: tuple[str, ...] = ()


@dataclass(frozen=True)
class Experiment:
    """One experiment of the suite.

    Conventions every experiment follows (see experiments/README.md):
      train(cfg, variant, run, resume) -> None               trains into `run`, a `medrepro.rundir.RunDir`
                                                             (runs/<name>/<variant>/ unless --out says so)
      evaluate(cfg, variant, run, out_dir, which) -> Evaluation   for results/<name>/<variant>/; `which`
                                                             is best, final or a checkpoint path
      bench(cfg, workdir) -> dict                            ratios against same-run references
      evaluate_published(cfg, weights, out_dir) -> Evaluation   (optional) the authors' released model at
                                                             `weights` (a file or directory), evaluated as
                                                             `evaluate` does, for results/<name>/published
    The config class has `seed`, `runtime`, `paths.runs` and `paths.results`.
    """

    name: str
    summary: str
    config: str
    variants: tuple[str, ...]
    # Data stages in pipeline order; the first is `prepare`.
    stages: tuple[Stage, ...]
    train: str
    evaluate: str
    bench: str
    # The validation metric charted across commits (a column of curves/val.csv, e.g. "f1").
    val_metric: str
    # Files the evaluation writes into the variant's results directory besides the standard ones.
    evaluate_outs: tuple[str, ...] = ()
    # Optional "module:function" (results_dir, variants) → Markdown placed under the experiment's table
    # (e.g. paired differences between variants); it may read the files listed in `evaluate_outs`.
    compare: str = ""
    # Evaluation reads every variant's run (paired differences between variants): every variant is
    # trained before any is evaluated, and each evaluation depends on all runs.
    evaluate_reads_all_runs: bool = False
    # The module declaring the dry run of the full profile (see `medrepro.suite.dryrun`).
    dryrun: str = ""
    # "module:function" of `evaluate --weights` (above); without it the option does not exist.
    evaluate_published: str = ""
    # The stage outputs (config keys) `evaluate --weights` reads, when not all of them: a released model
    # needs none of the stages that exist to train one.
    published_reads: tuple[str, ...] = ()
    # Commands outside the pipeline (e.g. `link`).
    commands: tuple[Command, ...] = field(default_factory=tuple)

    def config_class(self) -> type:
        return resolve(self.config)


def export_command(run: str, help: str, variants: tuple[str, ...],
                   extra: Callable[[argparse.ArgumentParser], None] | None = None) -> Command:
    """The `export` command every experiment declares: `--variant --run --checkpoint --out`, plus the
    experiment's own options from `extra`; `run` is its "module:function" called as `function(cfg, args)`."""

    def arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--variant", choices=variants, default=variants[0],
                            help="the variant of the run (default: %(default)s)")
        parser.add_argument("--run", type=Path, help="run directory (default: <paths.runs>/<variant>)")
        parser.add_argument("--checkpoint", default="best",
                            help="`best` (of a finished run), `final` or a checkpoint path (default: best)")
        parser.add_argument("--out", type=Path, required=True,
                            help="the directory to write (replaced if it exists)")
        if extra:
            extra(parser)

    return Command("export", help, run, arguments=arguments, writes={"out": "dir"})
