"""CT-CLIP: a CTViT volume encoder and a BERT report encoder trained with symmetric InfoNCE.

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
model, where the codes are the target); CT-CLIP never uses the codes or the commitment loss, so the
quantiser is left out here (README, Deviations). `UPSTREAM_KEYS` maps upstream's state-dict names onto
these modules.
"""

import re

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertModel, BertTokenizerFast

from experiments.ct_clip.config import ModelConfig
from medrepro.contrastive import gather_with_grad, in_batch_accuracy, symmetric_infonce
from medrepro.errors import ConfigError

# Upstream's fixed attention logit scale (the L2-normalised q and k make 1/sqrt(dim_head) meaningless).
ATTENTION_SCALE = 8.0
# Upstream's state-dict names → ours (regular expressions on the name with a leading dot, in order).
# UPSTREAM_ONLY are upstream tensors with no counterpart: always-zero LayerNorm betas, empty null
# key/values, context norms of a cross-attention never built, and the parts CT-CLIP never runs (VQ
# codebook, first-frame patch embedding, pixel decoders, the unused extra latent projections, BERT's pooler).
UPSTREAM_KEYS = (
    (r"^\.visual_transformer\.", ".visual."), (r"^\.text_transformer\.", ".text."),
    (r"\.to_patch_emb\.([123])\.", lambda m: f".to_patch_emb.{int(m.group(1)) - 1}."),
    (r"\.layers\.(\d+)\.0\.", r".layers.\1.peg."), (r"\.layers\.(\d+)\.1\.", r".layers.\1.attn."),
    (r"\.layers\.(\d+)\.3\.4\.", r".layers.\1.ff.3."), (r"\.layers\.(\d+)\.3\.", r".layers.\1.ff."),
    (r"\.gamma$", ".weight"),
)
UPSTREAM_ONLY = re.compile(r"\.beta$|\.null_kv$|\.context_norm\.|(^|\.)vq\.|to_patch_emb_first_frame|to_pixels|"
                           r"_latent_extra\.|^text_transformer\.pooler\.")


def from_upstream(key: str) -> str | None:
    """Our name of upstream's state-dict key `key`, or None for a tensor CT-CLIP does not use."""
    if UPSTREAM_ONLY.search(key):
        return None
    key = "." + key
    for pattern, replacement in UPSTREAM_KEYS:
        key = re.sub(pattern, replacement, key)
    return key[1:]


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
        raise ConfigError(f"volume shape {tuple(shape)} is not divisible by the patches "
                          f"({temporal_patch}, {patch}, {patch}): change data.shape or the "
                          "model's patch sizes", "data.shape")
    return d // temporal_patch, h // patch, w // patch


class CTViT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.patch, self.temporal_patch = cfg.patch, cfg.temporal_patch
        patch_dim = cfg.temporal_patch * cfg.patch * cfg.patch
        self.spatial_rel_pos_bias = ContinuousPositionBias(cfg.dim, cfg.heads)
        self.to_patch_emb = nn.Sequential(nn.LayerNorm(patch_dim), nn.Linear(patch_dim, cfg.dim),
                                          nn.LayerNorm(cfg.dim))
        self.enc_spatial_transformer = Transformer(cfg.dim, cfg.spatial_depth, cfg.heads, cfg.dim_head)
        self.enc_temporal_transformer = Transformer(cfg.dim, cfg.temporal_depth, cfg.heads, cfg.dim_head)

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
        """The loss over the global batch (features gathered from every process), the temperature, and for
        the training health monitor the in-batch volume→report accuracy and the exponentiated scale."""
        image = gather_with_grad(self.encode_image(volume))
        text = gather_with_grad(self.encode_text(input_ids, attention_mask))
        return symmetric_infonce(image, text, self.temperature), {
            "temperature": self.temperature.detach(), "acc": in_batch_accuracy(image, text),
            "logit_scale": self.temperature.detach().exp()}

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
