"""retclip's dry run (`medrepro retclip dryrun`): configs/full.yaml at real size on a few synthetic patients.

Only the data source and size and the step counts differ from the full profile. The three BERTs are
the published checkpoints when this machine has them, else their published architectures with random
weights; the ViT-B-16 tower starts from OpenAI's weights when open_clip's file is in the local Hugging
Face cache, else from random weights, still built with QuickGELU as the tag implies.
"""

from collections.abc import Iterator
from pathlib import Path

import open_clip
import torch
from torch import nn

from experiments.retclip.config import RetClipConfig
from experiments.retclip.experiment import VARIANTS
from experiments.retclip.model import RetClip, build_model
from experiments.retclip.prompts import class_prompts, load_prompts, patient_prompts
from experiments.retclip.synthetic import CLASS_KEYWORDS, SYNTHETIC_QUALITY_KEYWORDS
from medrepro import hub, repro
from medrepro.dryrun import Probe

OVERRIDES = [
    # 14 synthetic patients at the full profile's 256-px LMDB images: the 0.8/0.1/0.1 split gives
    # 8 training pairs and 3 validation and 3 test patients, with eyes of 3 classes in each (an AUC
    # needs two or more).
    "data.source=synthetic", "data.synthetic_patients=14",
    # One training seed; 2 epochs of one optimizer step (batch 8), a validation after each, checkpoints.
    "seeds=[0]", "train.epochs=2", "train.batch_size=8", "train.num_workers=0", "eval.batch_size=8",
]
# The text encoders' names in the report (and in reference.yaml).
ENCODER_NAMES = {"pubmedbert": "PubMedBERT", "bert_base": "BERT-base", "biobert": "BioBERT"}
VISION_NAME = "ViT-B-16 image tower"
HEADS_NAME = "RET-CLIP heads"


def corpus() -> list[str]:
    """Every word of the synthetic reports and the zero-shot prompts, for the stand-in vocabularies."""
    prompts = load_prompts()
    texts = [k for ks in CLASS_KEYWORDS.values() for k in ks] + list(SYNTHETIC_QUALITY_KEYWORDS)
    texts += [t for side in ("left", "right") for ts in class_prompts(prompts, side) for t in ts]
    texts += [t for ts in patient_prompts(prompts) for t in ts]
    return sorted({w for t in texts for w in t.replace(".", " ").replace(":", " ").replace(",", " ").split()})


def model_overrides(cfg: RetClipConfig, models: Path) -> tuple[list[str], dict[str, str]]:
    overrides, sources = [], {}
    words = corpus()
    for name, encoder in cfg.encoders.items():
        path, source = hub.local_or_stand_in(encoder.path, models / encoder.path.replace("/", "--"), words)
        overrides.append(f"encoders.{name}.path={path}")
        sources[f"encoders.{name}.path"] = f"{encoder.path}: {source}"
    tag = cfg.model.vision_pretrained
    if tag and not Path(tag).is_file():
        if hub.cached_open_clip_weights(cfg.model.vision_model, tag):
            sources["model.vision_pretrained"] = f"{tag}: published weights (local Hugging Face cache)"
        else:
            # No weights: random initialisation, with the activation the tag's weights were trained with.
            gelu = bool(open_clip.get_pretrained_cfg(cfg.model.vision_model, tag).get("quick_gelu", False))
            overrides += ["model.vision_pretrained=", f"model.quick_gelu={str(gelu).lower()}"]
            sources["model.vision_pretrained"] = (f"{tag}: random weights, published architecture "
                                                  f"(quick_gelu={gelu})")
    return overrides, sources


class Heads(nn.Module):
    """RET-CLIP's own parameters beside the two towers, for the parameter report."""

    def __init__(self, model: RetClip):
        super().__init__()
        self.maps = nn.ModuleList([model.patient_proj, model.left_proj, model.right_proj])
        self.text_heads = model.text_heads
        self.logit_scales = model.logit_scales


def probe(cfg: RetClipConfig, variant: str, full_batch: int) -> Probe:
    repro.seed_everything(cfg.seeds[0], cfg.train.deterministic)  # as train_seed, before the towers
    model, tokenizer, _ = build_model(cfg.model, cfg.encoders[variant].path)
    side = model.visual.image_size
    side = side[0] if isinstance(side, tuple) else side
    # A report that fills the context: the longest keywords on both eyes.
    longest = ", ".join(k for ks in CLASS_KEYWORDS.values() for k in ks)
    report = f"Left eye: {longest}. Right eye: {longest}."

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # What the training DataLoader collates from PairDataset: two normalised eye images and the tokens.
        generator = torch.Generator().manual_seed(n)
        left, right = (torch.randn((n, 3, side, side), generator=generator) for _ in range(2))
        return left, right, tokenizer([report] * n)

    def loss(model: RetClip, batch: tuple) -> torch.Tensor:
        return model(*batch)[0]  # train.loss_fn: model(*batch), the summed tripartite loss

    return Probe(f"RetClip-{variant}", model, batch, loss, full_batch=full_batch,
                 full_batch_note=f"train.batch_size {full_batch} of configs/full.yaml on one GPU (two eyes each)",
                 parts={VISION_NAME: model.visual, ENCODER_NAMES[variant]: model.text, HEADS_NAME: Heads(model)})


def probes(cfg: RetClipConfig, full: RetClipConfig, workdir: Path) -> Iterator[Probe]:
    # One at a time (a generator): the measurement drops each real-size model before the next is built.
    for variant in VARIANTS:
        yield probe(cfg, variant, full.train.batch_size)
