"""RET-CLIP: one image tower for both eyes, patient/left/right heads, three text heads, three scales.

The towers are open_clip's: the vision tower of `vision_model` (ViT-B-16 in the full profile) and a
Hugging Face BERT text tower returning the raw [CLS] state. The heads follow upstream RET-CLIP: the
patient feature maps the concatenated eye pair (2·embed → embed), the left and right features are
embed → embed maps, all three without bias; each of the three text heads is an MLP
(width → width → ReLU → embed) on [CLS] whose weights start normal with std width^-0.5. The loss is
the sum of three symmetric contrastive losses, all against the same report text.
"""

import dataclasses
from pathlib import Path

import open_clip
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from open_clip.tokenizer import HFTokenizer
from torch import nn

from experiments.retclip.config import ModelConfig
from medrepro.contrastive import gather_with_grad, in_batch_accuracy, symmetric_infonce
from medrepro.errors import ConfigError
from medrepro.published import KeyMap

HEADS = ("patient", "left", "right")

# The released RET-CLIP's names (upstream's CLIP in RET_CLIP/clip/model.py) → ours. The image tower has the
# same names (OpenAI's ViT layout, as open_clip's). A state dict saved from upstream's DDP-wrapped model
# carries `module.`. Dropped: BERT's pooler, which upstream's BertModel does not build and its loaders
# filter out of a checkpoint ("bert.pooler" not in k), and which our text tower never computes with.
UPSTREAM = KeyMap(
    renames=(
        (r"^\.module\.", "."), (r"^\.bert\.", ".text.transformer."),
        (r"^\.global_feature_mapping\.", ".patient_proj."), (r"^\.left_feature_mapping\.", ".left_proj."),
        (r"^\.right_feature_mapping\.", ".right_proj."), (r"^\.text_projection\.", ".text_heads.patient."),
        (r"^\.text_projection_left\.", ".text_heads.left."), (r"^\.text_projection_right\.", ".text_heads.right."),
        (r"^\.logit_scale$", ".logit_scales.patient"), (r"^\.logit_scale_left$", ".logit_scales.left"),
        (r"^\.logit_scale_right$", ".logit_scales.right"),
    ),
    dropped=r"^(module\.)?bert\.pooler\.",
)


class RetClip(nn.Module):
    def __init__(self, visual: nn.Module, text: nn.Module, text_width: int, embed_dim: int,
                 init_logit_scale: float, max_logit_scale: float):
        super().__init__()
        self.visual = visual
        self.text = text
        self.patient_proj = nn.Linear(2 * embed_dim, embed_dim, bias=False)
        self.left_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.right_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.text_heads = nn.ModuleDict({
            head: nn.Sequential(nn.Linear(text_width, text_width), nn.ReLU(), nn.Linear(text_width, embed_dim))
            for head in HEADS
        })
        for linear in (m for head in self.text_heads.values() for m in head if isinstance(m, nn.Linear)):
            nn.init.normal_(linear.weight, std=text_width**-0.5)
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
        losses, features = {}, {}
        for head in HEADS:
            features[head] = gather_with_grad(image[head]), gather_with_grad(self.text_heads[head](cls))
            losses[head] = symmetric_infonce(*features[head], self.logit_scales[head])
        logs = {f"loss_{h}": loss.detach() for h, loss in losses.items()}
        logs.update({f"logit_scale_{h}": s.detach().exp() for h, s in self.logit_scales.items()})
        # The training health signs: in-batch image→text accuracy of the patient head and its
        # exponentiated logit scale.
        logs["acc"] = in_batch_accuracy(*features["patient"])
        logs["logit_scale"] = logs["logit_scale_patient"]
        return sum(losses.values()), logs

    @torch.no_grad()
    def clamp_logit_scales(self) -> None:
        for scale in self.logit_scales.values():
            scale.clamp_(0.0, self.max_logit_scale)


def quick_gelu(cfg: ModelConfig) -> bool:
    """Whether the vision tower uses QuickGELU: what the pretrained tag was trained with (OpenAI's
    weights: yes), else `model.quick_gelu` (default no)."""
    tag_cfg = {}
    if cfg.vision_pretrained and not Path(cfg.vision_pretrained).is_file():
        tag_cfg = open_clip.get_pretrained_cfg(cfg.vision_model, cfg.vision_pretrained)
        if not tag_cfg:
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(cfg.vision_model))
            raise ConfigError(f"model.vision_pretrained: open_clip has no weights {cfg.vision_pretrained!r} for "
                              f"{cfg.vision_model} (it has {tags}); or give a weights file")
    if not tag_cfg:
        return bool(cfg.quick_gelu)
    needed = bool(tag_cfg.get("quick_gelu", False))
    if cfg.quick_gelu is not None and cfg.quick_gelu != needed:
        raise ConfigError(f"model.quick_gelu is {cfg.quick_gelu} but the {cfg.vision_model} weights "
                          f"{cfg.vision_pretrained!r} were trained with quick_gelu={needed}: remove the key")
    return needed


def vision_config(cfg: ModelConfig) -> dict:
    """`vision_model`'s open_clip vision config with the `vision_cfg` overrides.

    open_clip silently ignores keys it does not know, so the overrides are checked here.
    """
    base = open_clip.get_model_config(cfg.vision_model)
    if base is None:
        raise ConfigError(f"model.vision_model: open_clip has no model named {cfg.vision_model!r}")
    known = {f.name for f in dataclasses.fields(CLIPVisionCfg)}
    unknown = sorted(set(cfg.vision_cfg) - known)
    if unknown:
        raise ConfigError(f"model.vision_cfg: open_clip's vision config has no key {unknown[0]!r}")
    return {**base["vision_cfg"], **cfg.vision_cfg}


def build_towers(vision_cfg: dict, embed_dim: int, use_quick_gelu: bool, encoder: str, context_length: int,
                 pretrained_text: bool) -> tuple[nn.Module, nn.Module, HFTokenizer]:
    """open_clip's vision tower and HF text tower (weights from `encoder` when `pretrained_text`), and
    the tokenizer read from `encoder` (a hub id or a save_pretrained directory).

    Built from open_clip's model class rather than `create_model`: the factory loads the text weights
    as a separate "partial" load and warns about it on every build, and needs a registered config
    file; the class takes the config directly and loads the text tower's weights itself.
    """
    text_cfg = CLIPTextCfg(hf_model_name=encoder, hf_tokenizer_name=encoder, hf_model_pretrained=pretrained_text,
                           hf_pooler_type="cls_last_hidden_state_pooler", hf_proj_type=None,
                           context_length=context_length)
    try:
        clip = open_clip.CustomTextCLIP(embed_dim, CLIPVisionCfg(**vision_cfg), text_cfg, quick_gelu=use_quick_gelu)
        tokenizer = HFTokenizer(encoder, context_length=context_length)
    except OSError as e:
        raise ConfigError(f"text encoder {encoder!r} could not be loaded: pass a hub id with the hub reachable, "
                          f"or a local save_pretrained directory ({str(e).splitlines()[0][:160]})") from None
    # With no projection open_clip returns [CLS] unchanged only if its width equals embed_dim;
    # RET-CLIP's three text heads do the projection instead.
    clip.text.proj = nn.Identity()
    return clip.visual, clip.text, tokenizer


def load_vision_weights(visual: nn.Module, cfg: ModelConfig, use_quick_gelu: bool) -> None:
    """Copy the vision tower of open_clip's `vision_model` with `vision_pretrained` weights (a tag or a file)."""
    stock = open_clip.create_model(cfg.vision_model, pretrained=cfg.vision_pretrained, force_quick_gelu=use_quick_gelu)
    visual.load_state_dict(stock.visual.state_dict())


def build_model(cfg: ModelConfig, encoder: str) -> tuple[RetClip, HFTokenizer, nn.Module]:
    """Build RET-CLIP, its tokenizer and its eval image transform."""
    use_quick_gelu = quick_gelu(cfg)
    visual, text, tokenizer = build_towers(vision_config(cfg), cfg.embed_dim, use_quick_gelu, encoder,
                                           cfg.context_length, pretrained_text=True)
    if cfg.vision_pretrained:
        load_vision_weights(visual, cfg, use_quick_gelu)
    text_width = text.transformer.config.hidden_size
    model = RetClip(visual, text, text_width, cfg.embed_dim, cfg.init_logit_scale, cfg.max_logit_scale)
    return model, tokenizer, open_clip.image_transform(visual.image_size, is_train=False)
