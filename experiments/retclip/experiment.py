"""retclip in the suite: its commands and pipeline (see experiments/README.md)."""

import argparse
import os

from medrepro.suite.spec import Experiment, Stage, export_command

# One variant per text encoder; each is a key of `encoders` in every config.
VARIANTS = ("pubmedbert", "bert_base", "biobert")


def _workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="processes encoding JPEGs (default: min(8, cores))")


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, help="which training seed's model (default: the first of `seeds`)")
    parser.add_argument("--eye", choices=("left", "right"), default="left",
                        help="the eye head whose image feature open_clip's model returns (default: %(default)s)")


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
    evaluate_published="experiments.retclip.evaluate:evaluate_published",
    bench="experiments.retclip.bench:bench",
    dryrun="experiments.retclip.dryrun",
    val_metric="auroc_macro",
    evaluate_outs=("predictions.json",),
    compare="experiments.retclip.compare:comparison_section",
    commands=(
        export_command("experiments.retclip.export:export_command",
                       "a trained model as an open_clip directory (`local-dir:`: one eye's image head, the text "
                       "tower) with the other heads beside it, tokenizer, prompts and a model card",
                       VARIANTS, extra=_export_arguments),
    ),
)
