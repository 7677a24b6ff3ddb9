"""exmed_bert in the suite: its commands and pipeline (see experiments/README.md)."""

import argparse
from pathlib import Path

from medrepro.suite.spec import Command, Experiment, Stage, export_command

TRANSFORMERS = ("random_init", "clinvec_init")
BASELINES = ("random_forest", "xgboost")


def _pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", help="`latest` to continue interrupted pretraining runs")


def _guided_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--write-config", type=Path, default=Path("exmed_bert-guided.yaml"),
                        help="where to write the resolved config the guided run uses (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("exmed_bert-guided"),
                        help="default answer for the output directory (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="write the config and stop before running")


EXPERIMENT = Experiment(
    name="exmed_bert",
    summary="ExMed-BERT on medical-code sequences: ClinVec or random init against Random Forest and XGBoost",
    config="experiments.exmed_bert.config:ExMedBertConfig",
    # One row each in the results table; the two baselines are fitted by `train` too, on the same split.
    variants=(*TRANSFORMERS, *BASELINES),
    stages=(
        Stage("prepare", "patients JSON (or the synthetic twin) → validated, split, converted dataset",
              "experiments.exmed_bert.prepare:prepare", outs=("paths.prepared",)),
        Stage("clinvec", "ClinVec vectors for the vocabulary (ancestor fallback, resize) and the coverage report",
              "experiments.exmed_bert.clinvec:clinvec_stage", outs=("paths.clinvec",), deps=("paths.prepared",)),
        Stage("pretrain", "masked-code (+ PLOS) pretraining from random and from ClinVec initialisation",
              "experiments.exmed_bert.pretrain:pretrain", arguments=_pretrain_arguments,
              outs=("paths.pretrained",), deps=("paths.prepared", "paths.clinvec")),
    ),
    train="experiments.exmed_bert.train:train",
    evaluate="experiments.exmed_bert.evaluate:evaluate",
    # The authors' released pretraining model, scored on its pretraining tasks (README).
    evaluate_published="experiments.exmed_bert.evaluate:evaluate_published",
    published_reads=("paths.prepared",),
    bench="experiments.exmed_bert.bench:bench",
    dryrun="experiments.exmed_bert.dryrun",
    val_metric="f1",
    evaluate_outs=("predictions.json",),
    # Each evaluation reports paired differences against the other variants on the same test patients.
    evaluate_reads_all_runs=True,
    commands=(
        Command("guided", "step-by-step prompts → a resolved config, then the run (needs a terminal)",
                "experiments.exmed_bert.guided:guided", arguments=_guided_arguments,
                writes={"out": "dir", "write_config": "file"}),
        export_command("experiments.exmed_bert.export:export_command",
                       "a fine-tuned checkpoint as a transformers directory (custom code, safetensors) with its "
                       "vocabulary and a model card", TRANSFORMERS),
    ),
)
