"""retclip in the suite: its commands and pipeline (see experiments/README.md)."""

import argparse
import os

from medrepro.suite.spec import Experiment, Stage


def _workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="processes encoding JPEGs (default: min(8, cores))")


EXPERIMENT = Experiment(
    name="retclip",
    summary="RET-CLIP on ODIR-5K: three text encoders, several seeds each, compared by zero-shot classification",
    config="experiments.retclip.config:RetClipConfig",
    # One variant per text encoder; each is a key of `encoders` in every config.
    variants=("pubmedbert", "bert_base", "biobert"),
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
    val_metric="auc_macro",
    evaluate_outs=("predictions.json",),
    compare="experiments.retclip.compare:comparison_section",
)
