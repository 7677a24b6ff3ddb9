"""biomedica_clip in the suite: its commands and pipeline (see experiments/README.md)."""

from medrepro.suite.spec import Experiment, Stage, export_command

VARIANTS = ("finetune",)

EXPERIMENT = Experiment(
    name="biomedica_clip",
    summary="OpenCLIP fine-tuning on BIOMEDICA-style WebDataset shards with open_clip's own trainer",
    config="experiments.biomedica_clip.config:BiomedicaClipConfig",
    # One fine-tuning run; evaluate compares it with the weights it started from.
    variants=VARIANTS,
    stages=(
        Stage("prepare", "synthetic BIOMEDICA-style shards, their CSV twin and (smoke) the tiny open_clip model",
              "experiments.biomedica_clip.prepare:prepare", outs=("paths.prepared",)),
        Stage("audit", "check every shard (decodable image, caption, archive filters); sizes.json, manifest",
              "experiments.biomedica_clip.archive:audit", outs=("paths.audited",), deps=("paths.prepared",)),
    ),
    train="experiments.biomedica_clip.train:train",
    evaluate="experiments.biomedica_clip.evaluate:evaluate",
    evaluate_published="experiments.biomedica_clip.evaluate:evaluate_published",
    bench="experiments.biomedica_clip.bench:bench",
    dryrun="experiments.biomedica_clip.dryrun",
    val_metric="loss",  # open_clip_train's clip_val_loss on the held-out shard, per epoch
    commands=(
        export_command("experiments.biomedica_clip.export:export_command",
                       "the fine-tuned model as an open_clip directory (`local-dir:`: config, safetensors weights "
                       "without optimizer state, tokenizer files, model card); best and final are both the last "
                       "epoch (open_clip_train keeps no best, and validates on the held-out test shard)",
                       VARIANTS),
    ),
)
