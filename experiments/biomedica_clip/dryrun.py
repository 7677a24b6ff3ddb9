"""biomedica_clip's dry run (`medrepro biomedica_clip dryrun`): configs/full.yaml at real size on a few
synthetic shard samples, through open_clip_train on this machine's CPU.

Only the data source and size, the step counts, and the launch (one CPU process instead of eight GPUs)
differ from the full profile. ViT-B-32-quickgelu starts from OpenAI's weights when open_clip's file is
in the local Hugging Face cache, else from random weights (the architecture is the same).
"""

from pathlib import Path

import open_clip
import torch
from open_clip.loss import ClipLoss
from torch import nn

from experiments.biomedica_clip import synthetic
from experiments.biomedica_clip.config import BiomedicaClipConfig
from medrepro import hub
from medrepro.dryrun import Probe

OVERRIDES = [
    # One training shard of 4 samples and a held-out shard of 16 (every class), at 224 px: the model's
    # input size, as BIOMEDICA's figures are larger than it.
    "data.source=synthetic", "data.synthetic.train_shards=1", "data.synthetic.samples_per_shard=4",
    "data.synthetic.heldout_samples=16", "data.synthetic.image_size=224",
    # Two epochs of one step of 4 samples, a validation on the held-out shard and a checkpoint after each.
    # One process on the CPU (full: torchrun, 8 processes on cuda); no loader workers.
    "train.batch_size=4", "train.epochs=2", "train.workers=0", "train.processes=1", "train.device=cpu",
    "eval.batch_size=16",
]


def model_overrides(cfg: BiomedicaClipConfig, models: Path) -> tuple[list[str], dict[str, str]]:
    tag = cfg.model.pretrained
    if not tag or cfg.model.tiny or Path(tag).is_file():
        return [], {}
    if hub.cached_open_clip_weights(cfg.model.name, tag):
        return [], {"model.pretrained": f"{tag}: published weights (local Hugging Face cache)"}
    # The name (ViT-B-32-quickgelu) fixes the architecture, QuickGELU included; only the weights go.
    return ["model.pretrained="], {"model.pretrained": f"{tag}: random weights, published architecture"}


class TextTower(nn.Module):
    """The text tower of open_clip's CLIP (its modules sit on the model itself), for the parameter report:
    what open_clip's profile counts as `text` (token and position embeddings, transformer, final norm,
    projection)."""

    def __init__(self, model: open_clip.CLIP):
        super().__init__()
        self.token_embedding, self.transformer, self.ln_final = model.token_embedding, model.transformer, model.ln_final
        self.positional_embedding, self.text_projection = model.positional_embedding, model.text_projection


def probes(cfg: BiomedicaClipConfig, full_cfg: BiomedicaClipConfig, workdir: Path) -> list[Probe]:
    full = full_cfg.train  # the full profile's batch per GPU, precision and loss settings
    # As open_clip_train's main: its seed, then create_model_and_transforms with the run's precision.
    torch.manual_seed(cfg.seed)
    model, _, _ = open_clip.create_model_and_transforms(cfg.model.name, cfg.model.pretrained or None,
                                                        precision=full.precision, device="cpu", output_dict=True)
    tokenizer = open_clip.get_tokenizer(cfg.model.name)
    side = model.visual.image_size
    side = side[0] if isinstance(side, tuple) else side
    # A caption that fills the 77-token context: the synthetic captions, several times over.
    caption = " ".join(f"{c} ({p})." for c, p in zip(synthetic.ALL_CLASSES, synthetic.PANELS * 4, strict=True))
    # open_clip_train's create_loss: ClipLoss on one process (one rank of the full run's eight contrasts
    # its own batch against the gathered features).
    clip_loss = ClipLoss(local_loss=full.local_loss, gather_with_grad=full.gather_with_grad, cache_labels=True,
                         rank=0, world_size=1)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(n)
        return torch.randn((n, 3, side, side), generator=generator), tokenizer([caption] * n)

    def loss(model: nn.Module, batch: tuple) -> torch.Tensor:
        images, texts = batch
        return sum(clip_loss(**model(images, texts), output_dict=True).values())

    return [Probe(cfg.model.name, model, batch, loss, full_batch=full.batch_size,
                  full_batch_note=f"train.batch_size {full.batch_size} per GPU on {full.processes} GPUs",
                  parts={"image tower": model.visual, "text tower": TextTower(model)})]
