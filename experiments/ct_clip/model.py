"""CT-CLIP for training: the model of modeling_ct_clip.py (the one definition of the architecture, which
`export` saves) built from the experiment's config and a loaded text encoder, with the training loss
over the global batch; and `UPSTREAM`, which maps upstream's state-dict names onto its modules.
"""

import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

from experiments.ct_clip import modeling_ct_clip as modeling
from experiments.ct_clip.config import ModelConfig
from medrepro.contrastive import gather_with_grad, in_batch_accuracy, symmetric_infonce
from medrepro.errors import ConfigError
from medrepro.published import KeyMap

# Upstream's state-dict names → ours. Dropped: upstream tensors with no counterpart: always-zero LayerNorm
# betas, empty null key/values, context norms of a cross-attention never built, the VQ's training state
# (EMA cluster sizes and sums, the initialised flag), the parts CT-CLIP never runs (first-frame patch
# embedding, pixel decoders, the unused extra latent projections, BERT's pooler) and the position-id
# buffer older transformers saved (0, 1, 2, ...: no learned value).
UPSTREAM = KeyMap(
    renames=(
        (r"^\.visual_transformer\.", ".visual."), (r"^\.text_transformer\.", ".text."),
        (r"\.to_patch_emb\.([123])\.", lambda m: f".to_patch_emb.{int(m.group(1)) - 1}."),
        (r"\.layers\.(\d+)\.0\.", r".layers.\1.peg."), (r"\.layers\.(\d+)\.1\.", r".layers.\1.attn."),
        (r"\.layers\.(\d+)\.3\.4\.", r".layers.\1.ff.3."), (r"\.layers\.(\d+)\.3\.", r".layers.\1.ff."),
        (r"\.gamma$", ".weight"), (r"\.vq\._codebook\.embed$", ".vq.embed"),
    ),
    dropped=r"\.beta$|\.null_kv$|\.context_norm\.|(^|\.)vq\._codebook\.(initted|cluster_size|embed_avg)$|"
            r"to_patch_emb_first_frame|to_pixels|_latent_extra\.|^text_transformer\.pooler\.|"
            r"^text_transformer\.embeddings\.position_ids$",
)


def token_grid(temporal_patch: int, patch: int, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """The token grid (t, h, w) of a volume of `shape` (slices, height, width); a shape the patches do
    not divide names the config keys to change."""
    try:
        return modeling.token_grid(temporal_patch, patch, shape)
    except ValueError as e:
        raise ConfigError(f"{e}: change data.shape or the model's patch sizes", "data.shape") from None


class CTViT(modeling.CTViT):
    """The volume encoder of the experiment's model config, its shape mistakes reported as config errors."""

    def grid(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        return token_grid(self.temporal_patch, self.patch, shape)


def clip_config(cfg: ModelConfig, shape: tuple[int, int, int], text_config: BertConfig) -> modeling.CTClipConfig:
    """The transformers config of the model of `cfg` over volumes of `shape`, with a text tower of `text_config`.

    The text tower's config is copied: a config given its sub-configs as objects sets their attention
    implementation to its own, which would switch a loaded tower off the one it was loaded with."""
    return modeling.CTClipConfig(
        text_config=text_config.to_dict(), dim=cfg.dim, patch=cfg.patch, temporal_patch=cfg.temporal_patch,
        spatial_depth=cfg.spatial_depth, temporal_depth=cfg.temporal_depth, heads=cfg.heads, dim_head=cfg.dim_head,
        latent=cfg.latent, init_temperature=cfg.init_temperature, max_temperature=cfg.max_temperature,
        volume_shape=list(shape), context_length=cfg.context_length)


class CTClip(modeling.CTClipModel):
    """The model in training: called with a batch, it returns the contrastive loss."""

    def __init__(self, cfg: ModelConfig, shape: tuple[int, int, int], text: BertModel):
        token_grid(cfg.temporal_patch, cfg.patch, shape)  # a shape mistake as the config error it is
        super().__init__(clip_config(cfg, shape, text.config), text)

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
        self.temperature.clamp_(max=self.config.max_temperature)


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
