"""CT-CLIP as a transformers model: the one definition of the architecture. The training code builds it
(experiments/ct_clip/model.py) and `medrepro ct_clip export` saves it with `save_pretrained`.

This module imports torch and transformers only: the export copies it beside the weights, so that
`AutoModel.from_pretrained(directory, trust_remote_code=True)` rebuilds the model without this repository.

CTViT as upstream (transformer_maskgit's ctvit.py and attention.py): the volume (B, 1, D, H, W) is cut
into patches of temporal_patch × patch × patch voxels (LayerNorm, linear to `dim`, LayerNorm), then a
spatial transformer attends within each slab of slices, with a continuous position bias (a small MLP
of the log relative (row, column) offset, one bias per head), and a temporal transformer along the
slabs at each position. Every block of both: a depthwise 3-D convolution causal along the slabs (PEG),
cosine-similarity attention (bias-free LayerNorm, q and k L2-normalised and scaled per channel by
learned q_scale and k_scale, logits × 8), and a bias-free GEGLU feed-forward; a bias-free LayerNorm
closes each transformer. The image feature is the token grid averaged over the temporal axis,
flattened and projected to `latent`; the text feature is BERT's [CLS] state projected to `latent`.
Logits are exp(temperature) × cosine, with the temperature a parameter starting at
`init_temperature`.

Upstream quantises the tokens with a VQ codebook before this (CTViT comes from a video generation
model, where the codes are the target): `CTViT.forward(return_encoded_tokens=True)` returns the tokens
after `VectorQuantize`, so the released CT-CLIP's image features are codebook entries. Training here
leaves the quantiser out (experiments/ct_clip/README.md, Deviations); a config with `codebook_size`
applies a released codebook at inference, which the released weights need to compute what they
computed upstream.
"""

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel, PreTrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

# Upstream's fixed attention logit scale (the L2-normalised q and k make 1/sqrt(dim_head) meaningless).
ATTENTION_SCALE = 8.0


class CTClipConfig(PreTrainedConfig):
    model_type = "ct_clip"
    sub_configs_defaults: ClassVar[dict] = {"text_config": BertConfig}

    text_config: dict | BertConfig | None = None
    # CTViT.
    dim: int = 512
    patch: int = 20
    temporal_patch: int = 10
    spatial_depth: int = 4
    temporal_depth: int = 4
    heads: int = 8
    dim_head: int = 32
    # Upstream's VQ codebook (8,192 entries in the released model), applied at inference: 0 leaves it out.
    codebook_size: int = 0
    # The joint embedding, and the learnable temperature t (logits = exp(t) · cosine).
    latent: int = 512
    init_temperature: float = 1.0
    max_temperature: float = 4.6052
    # The input the model was trained on. volume_shape (slices, rows, columns) fixes the image projection's
    # width; the others say how to make such a volume: HU clipped to hu_window, resampled to spacing
    # (x, y, z mm), divided by hu_window's upper end, centre-cropped or padded with pad_value to volume_shape.
    volume_shape: list[int] | None = None
    spacing: list[float] | None = None
    hu_window: list[float] | None = None
    pad_value: float = -1.0
    # Reports are tokenised to this many tokens, padded to it.
    context_length: int = 512

    def __post_init__(self, **kwargs):
        self.volume_shape = list(self.volume_shape or (240, 480, 480))
        self.spacing = list(self.spacing or (0.75, 0.75, 1.5))
        self.hu_window = list(self.hu_window or (-1000.0, 1000.0))
        super().__post_init__(**kwargs)


class Attention(nn.Module):
    """Upstream's cosine-similarity self-attention, with an optional additive bias per head.

    As upstream, only the queries read the normalised tokens: keys and values are computed from the
    tokens as they come (upstream takes its key/value input before normalising, and its context norm
    serves only cross-attention)."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim, bias=False)
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, 2 * heads * dim_head, bias=False)
        self.q_scale = nn.Parameter(torch.ones(dim_head))
        self.k_scale = nn.Parameter(torch.ones(dim_head))
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.to_q(self.norm(x)).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.to_kv(x).view(b, n, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        q = F.normalize(q, dim=-1) * self.q_scale
        k = F.normalize(k, dim=-1) * self.k_scale
        bias = None if bias is None else bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=ATTENTION_SCALE)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class GEGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return F.gelu(gate) * x


def feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    inner = int(mult * (2 / 3) * dim)
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * inner, bias=False), GEGLU(),
                         nn.Linear(inner, dim, bias=False))


class PEG(nn.Module):
    """Position from a depthwise 3 × 3 × 3 convolution over the (slab, row, column) token grid, causal
    along the slabs (two slabs of zero padding before, none after).

    As upstream, the tokens are reshaped to `grid` (b, t, h, w) whatever their order: in the temporal
    transformer they are ordered (b, h, w, t), so its convolution mixes tokens that are not neighbours.
    Kept, so that upstream's weights compute here what they computed in training (README, Deviations).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dsconv = nn.Conv3d(dim, dim, 3, groups=dim)

    def forward(self, x: torch.Tensor, grid: tuple[int, int, int, int]) -> torch.Tensor:
        volume = x.reshape(*grid, -1).permute(0, 4, 1, 2, 3)
        volume = self.dsconv(F.pad(volume, (1, 1, 1, 1, 2, 0)))
        return volume.permute(0, 2, 3, 4, 1).reshape(x.shape)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.peg = PEG(dim)
        self.attn = Attention(dim, heads, dim_head)
        self.ff = feed_forward(dim)

    def forward(self, x: torch.Tensor, grid: tuple[int, int, int, int], bias: torch.Tensor | None) -> torch.Tensor:
        x = x + self.peg(x, grid)
        x = x + self.attn(x, bias)
        return x + self.ff(x)


class Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, dim_head: int):
        super().__init__()
        self.layers = nn.ModuleList(Block(dim, heads, dim_head) for _ in range(depth))
        self.norm_out = nn.LayerNorm(dim, bias=False)

    def forward(self, x: torch.Tensor, grid: tuple[int, int, int, int], bias: torch.Tensor | None = None,
                ) -> torch.Tensor:
        for block in self.layers:
            x = block(x, grid, bias)
        return self.norm_out(x)


class ContinuousPositionBias(nn.Module):
    """(heads, h·w, h·w) attention bias from an MLP of each token pair's signed log offset (Swin v2).

    Upstream runs the MLP on every pair, (h·w)² = 331,776 rows at full size; the bias depends only on
    the offset, so here it runs on the (2h − 1)(2w − 1) = 2,209 distinct offsets and is gathered: the
    same numbers for 150× less compute and activation memory."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.net = nn.ModuleList([nn.Sequential(nn.Linear(2, dim), nn.LeakyReLU(0.1)),
                                  nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU(0.1)), nn.Linear(dim, heads)])

    def forward(self, h: int, w: int) -> torch.Tensor:
        device = self.net[-1].weight.device
        dy, dx = torch.meshgrid(torch.arange(1 - h, h, device=device), torch.arange(1 - w, w, device=device),
                                indexing="ij")
        offset = torch.stack([dy.flatten(), dx.flatten()], dim=1).float()
        x = torch.sign(offset) * torch.log(offset.abs() + 1)
        for layer in self.net:
            x = layer(x)
        rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        rows, cols = rows.flatten(), cols.flatten()
        index = (rows[:, None] - rows[None, :] + h - 1) * (2 * w - 1) + (cols[:, None] - cols[None, :] + w - 1)
        return x[index].permute(2, 0, 1)


def token_grid(temporal_patch: int, patch: int, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """The token grid (t, h, w) of a volume of `shape` (slices, height, width)."""
    d, h, w = shape
    if d % temporal_patch or h % patch or w % patch:
        raise ValueError(f"volume shape {tuple(shape)} is not divisible by the patches "
                         f"({temporal_patch}, {patch}, {patch})")
    return d // temporal_patch, h // patch, w // patch


class CTViT(nn.Module):
    """The volume encoder; `cfg` is a CTClipConfig, or any object with its CTViT fields (dim, patch,
    temporal_patch, spatial_depth, temporal_depth, heads, dim_head)."""

    def __init__(self, cfg: CTClipConfig):
        super().__init__()
        self.patch, self.temporal_patch = cfg.patch, cfg.temporal_patch
        patch_dim = cfg.temporal_patch * cfg.patch * cfg.patch
        self.spatial_rel_pos_bias = ContinuousPositionBias(cfg.dim, cfg.heads)
        self.to_patch_emb = nn.Sequential(nn.LayerNorm(patch_dim), nn.Linear(patch_dim, cfg.dim),
                                          nn.LayerNorm(cfg.dim))
        self.enc_spatial_transformer = Transformer(cfg.dim, cfg.spatial_depth, cfg.heads, cfg.dim_head)
        self.enc_temporal_transformer = Transformer(cfg.dim, cfg.temporal_depth, cfg.heads, cfg.dim_head)
        codebook_size = getattr(cfg, "codebook_size", 0)
        self.vq = CosineCodebook(codebook_size, cfg.dim) if codebook_size else None

    def grid(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        return token_grid(self.temporal_patch, self.patch, shape)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) → tokens (B, t, h, w, dim)."""
        b = volume.shape[0]
        t, h, w = self.grid(tuple(volume.shape[2:]))
        pt, p = self.temporal_patch, self.patch
        x = volume.reshape(b, t, pt, h, p, w, p).permute(0, 1, 3, 5, 2, 4, 6).reshape(b, t, h, w, pt * p * p)
        x = self.to_patch_emb(x)
        grid = (b, t, h, w)
        bias = self.spatial_rel_pos_bias(h, w)
        x = self.enc_spatial_transformer(x.reshape(b * t, h * w, -1), grid, bias).reshape(b, t, h, w, -1)
        x = self.enc_temporal_transformer(x.permute(0, 2, 3, 1, 4).reshape(b * h * w, t, -1), grid)
        x = x.reshape(b, h, w, t, -1).permute(0, 3, 1, 2, 4)
        return self.vq(x) if self.vq is not None else x


class CosineCodebook(nn.Module):
    """Upstream's quantiser at inference (vector-quantize-pytorch's VectorQuantize with use_cosine_sim, one
    head): each token becomes the codebook row of highest cosine similarity, the row as stored. Upstream
    pins version 1.1.2, whose training update leaves rows shorter than unit length (1.8.1 keeps them unit),
    so the ranking normalises the rows and the output does not. In float32, as upstream's codebook runs.
    `embed` keeps upstream's layout, (1, entries, dim)."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("embed", torch.zeros(1, size, dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.training:
            # Upstream trains through it straight-through with EMA updates of the codebook; not built here.
            raise RuntimeError("the VQ codebook is for evaluating released weights; training here leaves it out")
        flat = tokens.reshape(-1, tokens.shape[-1]).float()
        codes = (flat @ F.normalize(self.embed[0].float(), dim=-1).T).argmax(dim=-1)
        return self.embed[0][codes].reshape(tokens.shape).to(tokens.dtype)


@dataclass
class CTClipOutput(ModelOutput):
    """Embeddings (not normalised) and the logits exp(temperature) × cosine between every volume and text."""

    logits_per_volume: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    volume_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None


class CTClipPreTrainedModel(PreTrainedModel):
    config_class = CTClipConfig
    base_model_prefix = "ct_clip"
    # The text tower's BERT attention: scaled_dot_product_attention, as BertModel.from_pretrained chooses.
    _supports_sdpa = True

    def init_weights(self) -> None:
        """Nothing at construction: the weights stay as torch's module constructors drew them, the start
        of training (a pass here would draw them again). Loading fills what a checkpoint lacks through
        `_init_weights`, with the same distributions."""

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, Attention):
            nn.init.ones_(module.q_scale)
            nn.init.ones_(module.k_scale)
        elif isinstance(module, CTClipModel):
            nn.init.constant_(module.temperature, self.config.init_temperature)
        elif isinstance(module, nn.Linear | nn.LayerNorm | nn.Conv3d):
            module.reset_parameters()


class CTClipModel(CTClipPreTrainedModel):
    """CTViT and a BERT text tower, each projected to the joint embedding, and the temperature."""

    def __init__(self, config: CTClipConfig, text: BertModel | None = None):
        """`text`: a text tower already loaded (the training code's, from the encoder's checkpoint); by
        default a new one from `config.text_config`."""
        super().__init__(config)
        # The order of creation fixes which random numbers each module's constructor draws: kept as it was
        # when the committed runs were trained.
        self.visual = CTViT(config)
        _, h, w = self.visual.grid(tuple(config.volume_shape))
        self.to_visual_latent = nn.Linear(h * w * config.dim, config.latent, bias=False)
        self.text = text if text is not None else BertModel(config.text_config, add_pooling_layer=False)
        self.to_text_latent = nn.Linear(self.text.config.hidden_size, config.latent, bias=False)
        self.temperature = nn.Parameter(torch.tensor(float(config.init_temperature)))
        self.post_init()

    def encode_image(self, volume: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) preprocessed volumes → (B, latent)."""
        return self.to_visual_latent(self.visual(volume).mean(dim=1).flatten(1))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Tokenised reports (B, context_length) → (B, latent), from BERT's [CLS] state."""
        cls = self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        return self.to_text_latent(cls)

    def forward(self, volume: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> CTClipOutput:
        image, text = self.encode_image(volume), self.encode_text(input_ids, attention_mask)
        logits = self.temperature.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
        return CTClipOutput(logits_per_volume=logits, logits_per_text=logits.T, volume_embeds=image,
                            text_embeds=text)
