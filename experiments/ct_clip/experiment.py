"""ct_clip in the suite: its commands and pipeline (see experiments/README.md)."""

import argparse

from medrepro.suite.spec import Command, Experiment, Stage, export_command

VARIANTS = ("cxr_bert",)


def _workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=0,
                        help="processes preprocessing volumes, one volume each at a time (default: data.workers)")


EXPERIMENT = Experiment(
    name="ct_clip",
    summary="CT-CLIP on CT-RATE: CTViT + BERT from WebDataset shards, zero-shot on 18 abnormalities",
    config="experiments.ct_clip.config:CtClipConfig",
    # The text encoder: CXR-BERT-specialized in the full profile, its tiny stand-in in smoke.
    variants=VARIANTS,
    stages=(
        Stage("prepare", "CT-RATE (or its synthetic twin, v1 and v2 trees) → checked records, tiny encoder in smoke",
              "experiments.ct_clip.prepare:prepare", outs=("paths.prepared",)),
        Stage("shards", "records → preprocessed volumes in WebDataset shards with a SHA-256 manifest",
              "experiments.ct_clip.prepare:write_shards", arguments=_workers, outs=("paths.shards",),
              deps=("paths.prepared",)),
    ),
    train="experiments.ct_clip.train:train",
    evaluate="experiments.ct_clip.evaluate:evaluate",
    evaluate_published="experiments.ct_clip.evaluate:evaluate_published",
    bench="experiments.ct_clip.bench:bench",
    dryrun="experiments.ct_clip.dryrun",
    val_metric="auroc_macro",
    evaluate_outs=("predictions.json",),
    commands=(
        Command("check-shards", "re-check the shards against their manifests (exit 2 naming the shard and sample)",
                "experiments.ct_clip.prepare:check_shards"),
        export_command("experiments.ct_clip.export:export_command",
                       "a trained checkpoint as a transformers directory (custom code, safetensors): the whole "
                       "CT-CLIP, its tokenizer and the text tower alone, with a model card", VARIANTS),
    ),
)
