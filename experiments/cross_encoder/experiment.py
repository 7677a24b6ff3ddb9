"""cross_encoder in the suite: its commands and pipeline (see experiments/README.md)."""

import argparse
from pathlib import Path

from experiments.cross_encoder.layout import CALIBRATION_FILE, EVALUATION_FILE
from medrepro.suite.spec import Command, Experiment, Stage, export_command

VARIANTS = ("sapbert",)


def _link_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", type=Path, required=True,
                        help='PubTator file, or JSON lines {"id", "text", "spans": [[start, end]]}')
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, one mention a line")
    parser.add_argument("--model", type=Path, required=True,
                        help="an exported cross-encoder, calibration included: what "
                             "`medrepro cross_encoder export --out DIR` writes")
    parser.add_argument("--top", type=int, default=5, help="candidates per mention in the output")


EXPERIMENT = Experiment(
    name="cross_encoder",
    summary="A SapBERT cross-encoder re-ranking UMLS concepts for MedMentions mentions",
    config="experiments.cross_encoder.config:CrossEncoderConfig",
    # The cross-encoder's starting point: SapBERT in the full profile, its tiny stand-in in smoke.
    variants=VARIANTS,
    stages=(
        Stage("prepare", "MedMentions + UMLS (or synthetic twins) → concepts and mentions",
              "experiments.cross_encoder.prepare:prepare", outs=("paths.prepared",)),
        Stage("index", "encode every concept name with the bi-encoder into a FAISS index",
              "experiments.cross_encoder.retrieval:index_concepts", outs=("paths.index",),
              deps=("paths.prepared",)),
        Stage("mine", "candidates per mention, recall@k, and training pairs with hard negatives",
              "experiments.cross_encoder.mining:mine", outs=("paths.mined",),
              deps=("paths.prepared", "paths.index")),
    ),
    train="experiments.cross_encoder.train:train",
    evaluate="experiments.cross_encoder.evaluate:evaluate",
    # The released SapBERT alone as the linker (there is no released cross-encoder).
    evaluate_published="experiments.cross_encoder.published:evaluate_published",
    published_reads=("paths.prepared",),
    bench="experiments.cross_encoder.bench:bench",
    dryrun="experiments.cross_encoder.dryrun",
    val_metric="f1",
    evaluate_outs=(CALIBRATION_FILE, EVALUATION_FILE),
    commands=(
        export_command("experiments.cross_encoder.export:export_command",
                       "a trained checkpoint, calibrated, as a transformers / sentence-transformers directory "
                       "with a model card (what `link --model` reads)", VARIANTS),
        Command("link", "PubTator or JSON-lines spans → ranked CUIs with calibrated confidence (run `export` "
                "first)",
                "experiments.cross_encoder.link:link_command", arguments=_link_arguments,
                writes={"out": "file"}),
    ),
)
