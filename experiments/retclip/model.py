"""RET-CLIP: one image tower for both eyes, patient/left/right heads, three text heads, three scales.

open_clip builds the towers from a registered model config: the vision tower of `vision_model`
(ViT-B-16 in the full profile) and a Hugging Face BERT text tower returning the raw [CLS] state.
The heads follow upstream RET-CLIP: the patient feature maps the concatenated eye pair
(2·embed → embed, no bias), left and right features are embed → embed maps, and each of the three
text heads is an MLP (width → width → ReLU → embed) on [CLS]. The loss is the sum of three
symmetric contrastive losses, all against the same report text.
"""

import dataclasses
import hashlib
import json
import tempfile
from pathlib import Path

import open_clip
import torch
from open_clip.model import CLIPVisionCfg
from torch import nn

from experiments.retclip.config import ModelConfig
from medrepro.contrastive import gather_with_grad, symmetric_infonce
from medrepro.errors import ConfigError

HEADS = ("patient", "left", "right")


class RetClip(nn.Module):
    def __init__(self, visual: nn.Module, text: nn.Module, text_width: int, embed_dim: int,
                 init_logit_scale: float, max_logit_scale: float):
        super().__init__()
        self.visual = visual
        self.text = text
        self.patient_proj = nn.Linear(2 * embed_dim, embed_dim, bias=False)
        self.left_proj = nn.Linear(embed_dim, embed_dim)
        self.right_proj = nn.Linear(embed_dim, embed_dim)
        self.text_heads = nn.ModuleDict({
            head: nn.Sequential(nn.Linear(text_width, text_width), nn.ReLU(), nn.Linear(text_width, embed_dim))
            for head in HEADS
        })
        self.logit_scales = nn.ParameterDict({
            head: nn.Parameter(torch.tensor(float(init_logit_scale))) for head in HEADS
        })
        self.max_logit_scale = max_logit_scale

    def encode_eyes(self, left: torch.Tensor, right: torch.Tensor) -> dict[str, torch.Tensor]:
        eyes = self.visual(torch.cat([left, right]))
        left_raw, right_raw = eyes.chunk(2)
        return {
            "patient": self.patient_proj(torch.cat([left_raw, right_raw], dim=-1)),
            "left": self.left_proj(left_raw),
            "right": self.right_proj(right_raw),
        }

    def encode_eye(self, image: torch.Tensor, side: str) -> torch.Tensor:
        proj = self.left_proj if side == "left" else self.right_proj
        return proj(self.visual(image))

    def encode_text(self, tokens: torch.Tensor, head: str) -> torch.Tensor:
        return self.text_heads[head](self.text(tokens))

    def forward(self, left: torch.Tensor, right: torch.Tensor, tokens: torch.Tensor,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The tripartite loss over the global batch; per-head losses and logit scales for logging."""
        image = self.encode_eyes(left, right)
        cls = self.text(tokens)
        losses = {}
        for head in HEADS:
            img = gather_with_grad(image[head])
            txt = gather_with_grad(self.text_heads[head](cls))
            losses[head] = symmetric_infonce(img, txt, self.logit_scales[head])
        logs = {f"loss_{h}": loss.detach() for h, loss in losses.items()}
        logs.update({f"logit_scale_{h}": s.detach().exp() for h, s in self.logit_scales.items()})
        return sum(losses.values()), logs

    @torch.no_grad()
    def clamp_logit_scales(self) -> None:
        for scale in self.logit_scales.values():
            scale.clamp_(0.0, self.max_logit_scale)


def open_clip_config(cfg: ModelConfig, encoder: str) -> dict:
    """The open_clip model config: `vision_model`'s vision tower and an HF text tower on `encoder`.

    open_clip silently ignores keys it does not know, so vision overrides are checked here.
    """
    base = open_clip.get_model_config(cfg.vision_model)
    if base is None:
        raise ConfigError(f"model.vision_model: open_clip has no model named {cfg.vision_model!r}")
    known = {f.name for f in dataclasses.fields(CLIPVisionCfg)}
    unknown = sorted(set(cfg.vision_cfg) - known)
    if unknown:
        raise ConfigError(f"model.vision_cfg: open_clip's vision config has no key {unknown[0]!r}")
    text_cfg = {"hf_model_name": encoder, "hf_tokenizer_name": encoder,
                "hf_pooler_type": "cls_last_hidden_state_pooler", "hf_proj_type": None,
                "context_length": cfg.context_length}
    return {"embed_dim": cfg.embed_dim, "vision_cfg": {**base["vision_cfg"], **cfg.vision_cfg}, "text_cfg": text_cfg}


def build_model(cfg: ModelConfig, encoder: str) -> tuple[RetClip, open_clip.tokenizer.HFTokenizer, nn.Module]:
    """Build RET-CLIP, its tokenizer and its eval image transform.

    open_clip builds models only from registered config files; the config is registered under a
    name made from its content, from a temporary directory (open_clip keeps what it read), so
    nothing is written beside the run and the name is the same on every machine.
    """
    clip_cfg = open_clip_config(cfg, encoder)
    text = json.dumps(clip_cfg, indent=2, sort_keys=True)
    name = "RetClip-" + hashlib.sha256(text.encode()).hexdigest()[:12]
    with tempfile.TemporaryDirectory(prefix="retclip-open-clip-") as tmp:
        (Path(tmp) / f"{name}.json").write_text(text)
        open_clip.add_model_config(tmp)
    try:
        clip = open_clip.create_model(name, pretrained_text=True)
    except OSError as e:
        raise ConfigError(f"text encoder {encoder!r} could not be loaded: pass a hub id with the hub reachable, "
                          f"or a local save_pretrained directory ({str(e).splitlines()[0][:160]})") from None
    if cfg.vision_pretrained:
        stock = open_clip.create_model(cfg.vision_model, pretrained=cfg.vision_pretrained)
        clip.visual.load_state_dict(stock.visual.state_dict())
    text_width = clip.text.transformer.config.hidden_size
    # With no projection open_clip returns [CLS] unchanged only if its width equals embed_dim;
    # RET-CLIP's three text heads do the projection instead.
    clip.text.proj = nn.Identity()
    model = RetClip(clip.visual, clip.text, text_width, cfg.embed_dim, cfg.init_logit_scale, cfg.max_logit_scale)
    tokenizer = open_clip.get_tokenizer(name)
    transform = open_clip.image_transform(clip.visual.image_size, is_train=False)
    return model, tokenizer, transform
