"""CT-CLIP: a CTViT volume encoder and a BERT report encoder trained with symmetric InfoNCE.

CTViT as upstream: the volume (B, 1, D, H, W) is cut into patches of temporal_patch × patch × patch
voxels (LayerNorm, linear to `dim`, LayerNorm), a depthwise 3-D convolution adds position (PEG), then
a spatial transformer attends within each slab of slices and a temporal transformer along the slabs
at each position. The image feature is the token grid averaged over the temporal axis, flattened and
projected to `latent`; the text feature is BERT's [CLS] state projected to `latent`. Logits are
exp(temperature) × cosine, with the temperature a parameter starting at `init_temperature`.

Upstream quantises the tokens with a VQ codebook before this (CTViT comes from a video generation
model, where the codes are the target); CT-CLIP never uses the codes or the commitment loss, so the
quantiser is left out here (README, Deviations).
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertModel, BertTokenizerFast

from experiments.ct_clip.config import ModelConfig
from medrepro.contrastive import gather_with_grad, symmetric_infonce
from medrepro.errors import ConfigError


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1))


class Transformer(nn.Module):
    """Pre-norm blocks: attention and a GELU feed-forward (4 × dim), then a final LayerNorm."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int):
        super().__init__()
        self.attn = nn.ModuleList(Attention(dim, heads, dim_head) for _ in range(depth))
        self.ff = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(),
                                              nn.Linear(4 * dim, dim)) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attn, ff in zip(self.attn, self.ff, strict=True):
            x = x + attn(x)
            x = x + ff(x)
        return self.norm(x)


def token_grid(temporal_patch: int, patch: int, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """The token grid (t, h, w) of a volume of `shape` (slices, height, width)."""
    d, h, w = shape
    if d % temporal_patch or h % patch or w % patch:
        raise ConfigError(f"volume shape {tuple(shape)} is not divisible by the patches "
                          f"({temporal_patch}, {patch}, {patch}): change data.shape or the "
                          "model's patch sizes", "data.shape")
    return d // temporal_patch, h // patch, w // patch


class CTViT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.patch, self.temporal_patch = cfg.patch, cfg.temporal_patch
        patch_dim = cfg.temporal_patch * cfg.patch * cfg.patch
        self.to_tokens = nn.Sequential(nn.LayerNorm(patch_dim), nn.Linear(patch_dim, cfg.dim), nn.LayerNorm(cfg.dim))
        self.peg = nn.Conv3d(cfg.dim, cfg.dim, 3, padding=1, groups=cfg.dim)
        self.spatial = Transformer(cfg.dim, cfg.spatial_depth, cfg.heads, cfg.dim_head)
        self.temporal = Transformer(cfg.dim, cfg.temporal_depth, cfg.heads, cfg.dim_head)

    def grid(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        return token_grid(self.temporal_patch, self.patch, shape)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) → tokens (B, t, h, w, dim)."""
        b = volume.shape[0]
        t, h, w = self.grid(tuple(volume.shape[2:]))
        pt, p = self.temporal_patch, self.patch
        x = volume.reshape(b, t, pt, h, p, w, p).permute(0, 1, 3, 5, 2, 4, 6).reshape(b, t, h, w, pt * p * p)
        x = self.to_tokens(x)
        x = x + self.peg(x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
        x = self.spatial(x.reshape(b * t, h * w, -1)).reshape(b, t, h, w, -1)
        x = self.temporal(x.permute(0, 2, 3, 1, 4).reshape(b * h * w, t, -1))
        return x.reshape(b, h, w, t, -1).permute(0, 3, 1, 2, 4)


class CTClip(nn.Module):
    def __init__(self, cfg: ModelConfig, shape: tuple[int, int, int], text: BertModel):
        super().__init__()
        self.visual = CTViT(cfg)
        _, h, w = self.visual.grid(shape)
        self.to_visual_latent = nn.Linear(h * w * cfg.dim, cfg.latent, bias=False)
        self.text = text
        self.to_text_latent = nn.Linear(text.config.hidden_size, cfg.latent, bias=False)
        self.temperature = nn.Parameter(torch.tensor(float(cfg.init_temperature)))
        self.max_temperature = cfg.max_temperature

    def encode_image(self, volume: torch.Tensor) -> torch.Tensor:
        return self.to_visual_latent(self.visual(volume).mean(dim=1).flatten(1))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        cls = self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        return self.to_text_latent(cls)

    def forward(self, volume: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss over the global batch (features gathered from every process) and the temperature."""
        image = gather_with_grad(self.encode_image(volume))
        text = gather_with_grad(self.encode_text(input_ids, attention_mask))
        return symmetric_infonce(image, text, self.temperature), {"temperature": self.temperature.detach()}

    @torch.no_grad()
    def clamp_temperature(self) -> None:
        self.temperature.clamp_(max=self.max_temperature)


def build_model(cfg: ModelConfig, shape: tuple[int, int, int], encoder: str) -> tuple[CTClip, BertTokenizerFast]:
    """The model and its tokenizer; `encoder` is a hub id or a local `save_pretrained` directory.

    CXR-BERT-specialized's checkpoint is a BERT (under the `bert.` prefix) plus a projection head that
    [CLS] features do not use, so BertModel loads it without the repository's own model code. Its
    tokenizer_config.json names `CXRBertTokenizer` from that code, which AutoTokenizer refuses to load
    without trust_remote_code; the class is an empty subclass of BertTokenizer, so BERT's own tokenizer
    reads the files (as upstream CT-CLIP does), and no code from the hub runs.
    """
    token_grid(cfg.temporal_patch, cfg.patch, shape)  # a shape mistake before seconds of loading
    text = BertModel.from_pretrained(encoder, add_pooling_layer=False)
    tokenizer = BertTokenizerFast.from_pretrained(encoder)
    return CTClip(cfg, shape, text), tokenizer


def tokenize(tokenizer: BertTokenizerFast, texts: list[str], context_length: int) -> dict[str, torch.Tensor]:
    """Padded to `context_length` as upstream, so that a batch's shape never depends on its neighbours."""
    out = tokenizer(texts, padding="max_length", truncation=True, max_length=context_length, return_tensors="pt")
    return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}
