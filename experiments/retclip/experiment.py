"""retclip in the suite: its commands and pipeline (see experiments/README.md)."""

import argparse
import os
from pathlib import Path

from medrepro.suite.spec import Command, Experiment, Stage

# One variant per text encoder; each is a key of `encoders` in every config.
VARIANTS = ("pubmedbert", "bert_base", "biobert")


def _workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="processes encoding JPEGs (default: min(8, cores))")


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", required=True, choices=VARIANTS,
                        help="the encoder variant of the run")
    parser.add_argument("--run", type=Path, help="run directory (default: <paths.runs>/<variant>)")
    parser.add_argument("--seed", type=int, help="which training seed's model (default: the first of `seeds`)")
    parser.add_argument("--checkpoint", default="best", help="`best`, `final` or a checkpoint path")
    parser.add_argument("--out", type=Path, required=True, help="the directory to write (replaced if it exists)")


EXPERIMENT = Experiment(
    name="retclip",
    summary="RET-CLIP on ODIR-5K: three text encoders, several seeds each, compared by zero-shot classification",
    config="experiments.retclip.config:RetClipConfig",
    variants=VARIANTS,
    stages=(
        Stage("prepare", "ODIR-5K (or synthetic data) → prepared/patients.jsonl, tiny encoders in smoke",
              "experiments.retclip.prepare:prepare", outs=("paths.prepared",)),
        Stage("build-lmdb", "patients.jsonl → LMDB tables in the RET-CLIP layout",
              "experiments.retclip.prepare:build", arguments=_workers, outs=("paths.lmdb",),
              deps=("paths.prepared",)),
    ),
    train="experiments.retclip.train:train",
    evaluate="experiments.retclip.evaluate:evaluate",
    bench="experiments.retclip.bench:bench",
    dryrun="experiments.retclip.dryrun",
    val_metric="auroc_macro",
    evaluate_outs=("predictions.json",),
    compare="experiments.retclip.compare:comparison_section",
    commands=(
        Command("export", "a trained model as a self-contained directory (safetensors, config, tokenizer, prompts)",
                "experiments.retclip.export:export_command", arguments=_export_arguments,
                writes={"out": "dir"}),
    ),
)
