"""ct_clip's dry run (`medrepro ct_clip dryrun`): configs/full.yaml at real size on four generated volumes.

Only the data source and size and the step counts differ from the full profile; CXR-BERT is the
published checkpoint when this machine has it, else its published architecture with random weights.
"""

from pathlib import Path

import torch

from experiments.ct_clip.config import CtClipConfig
from experiments.ct_clip.model import CTClip, build_model, tokenize
from experiments.ct_clip.prompts import LABELS
from medrepro import hub
from medrepro.dryrun import Probe

OVERRIDES = [
    # Three training volumes (one patient held out for selection) and two validation volumes, one per
    # patient, of 512 × 512 × 240 voxels at 0.75 × 0.75 × 1.5 mm: after resampling and the centre crop,
    # the full profile's 240 × 480 × 480.
    "data.source=synthetic", "data.synthetic.scans=1", "data.synthetic.reconstructions=1",
    "data.synthetic.train=3", "data.synthetic.valid=2", "data.synthetic.size_xy=512",
    "data.synthetic.slices=[240,240]", "data.synthetic.spacing_xy=[0.75]", "data.synthetic.spacing_z=[1.5]",
    "data.synthetic.prevalence=0.5", "data.workers=1",
    # Two optimizer steps of one volume, a validation after each, checkpoints.
    "train.batch_size=1", "train.epochs=1", "train.num_workers=0", "eval.selection_patients=1", "eval.batch_size=1",
]


def model_overrides(cfg: CtClipConfig, models: Path) -> tuple[list[str], dict[str, str]]:
    overrides, sources = [], {}
    for name, encoder in cfg.encoders.items():
        path, source = hub.local_or_stand_in(encoder.path, models / encoder.path.replace("/", "--"), LABELS)
        overrides.append(f"encoders.{name}.path={path}")
        sources[f"encoders.{name}.path"] = f"{encoder.path}: {source}"
    return overrides, sources


def probes(cfg: CtClipConfig, full: CtClipConfig, workdir: Path) -> list[Probe]:
    shape = tuple(cfg.data.shape)
    model, tokenizer = build_model(cfg.model, shape, cfg.encoders["cxr_bert"].path)
    report = "Findings: " + ", ".join(LABELS).lower() + ". " * 40  # a report that fills the context

    def batch(n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # Preprocessed volumes lie in [-1, 1] (HU / 1000, clipped).
        volumes = torch.rand((n, 1, *shape), generator=torch.Generator().manual_seed(n)) * 2 - 1
        return volumes, tokenize(tokenizer, [report] * n, cfg.model.context_length)

    def loss(model: CTClip, batch: tuple) -> torch.Tensor:
        volumes, tokens = batch
        return model(volumes, **tokens)[0]

    gpus = 8  # configs/full.yaml: "4 per GPU on 8 GPUs"
    return [Probe("CTClip", model, batch, loss, full_batch=full.train.batch_size // gpus,
                  full_batch_note=f"train.batch_size {full.train.batch_size} over {gpus} GPUs",
                  parts={"CTViT": model.visual, "CXR-BERT": model.text, "to_visual_latent": model.to_visual_latent})]
