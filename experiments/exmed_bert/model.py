"""ExMed-BERT for training: the encoder and endpoint model of modeling_exmed_bert.py (the one definition
of the architecture, which `export` saves) built from the experiment's config and called with the
dataset's batches, plus the pretraining heads.

Pretraining: masked-code prediction (a transform and a decoder over the vocabulary) and optionally
prolonged length of stay (PLOS: two classes on the sum of the last hidden states). Fine-tuning: sum
pooling of the last hidden states → one logit, trained with BCE and a positive weight.

`UPSTREAM` and `fuse_attention` map upstream ExMed-BERT's released pretraining model onto `PretrainModel`.
"""

import re

import numpy as np
import torch
from torch import nn

from experiments.exmed_bert import modeling_exmed_bert as modeling
from experiments.exmed_bert.config import ModelConfig
from experiments.exmed_bert.dataset import PAD, TYPE_IDS
from medrepro.errors import CheckpointError
from medrepro.published import KeyMap

PRESETS = {
    "tiny": {"hidden_size": 32, "layers": 1, "heads": 1, "intermediate_size": 64},
    "small": {"hidden_size": 64, "layers": 2, "heads": 2, "intermediate_size": 128},
    "medium": {"hidden_size": 128, "layers": 4, "heads": 4, "intermediate_size": 256},
    "large": {"hidden_size": 288, "layers": 6, "heads": 6, "intermediate_size": 576},
}


def preset_sizes(cfg: ModelConfig) -> dict[str, int]:
    if cfg.preset == "custom":
        return {"hidden_size": cfg.hidden_size, "layers": cfg.layers, "heads": cfg.heads,
                "intermediate_size": cfg.intermediate_size}
    return PRESETS[cfg.preset]


def encoder_config(cfg: ModelConfig, vocab_size: int, n_sexes: int, n_states: int, projection_dim: int = 0
                   ) -> modeling.ExMedBertConfig:
    """The transformers config of the encoder of `cfg` over a vocabulary of `vocab_size` tokens."""
    sizes = preset_sizes(cfg)
    return modeling.ExMedBertConfig(
        vocab_size=vocab_size, code_types=len(TYPE_IDS), sexes=n_sexes, states=n_states,
        hidden_size=sizes["hidden_size"], num_hidden_layers=sizes["layers"], num_attention_heads=sizes["heads"],
        intermediate_size=sizes["intermediate_size"], dropout=cfg.dropout, max_age=cfg.max_age,
        max_visits=cfg.max_visits, projection_dim=projection_dim, initializer=cfg.init, pad_token_id=PAD)


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's keyword inputs from a batch of `dataset.pad_batch`."""
    return {"input_ids": batch["tokens"], "code_type_ids": batch["types"], "age_ids": batch["ages"],
            "visit_ids": batch["visits"], "sex_ids": batch["sex"], "state_ids": batch["state"],
            "attention_mask": batch["attention"]}


class Encoder(modeling.ExMedBertModel):
    """The encoder of the experiment's model config; `projection_dim` > 0 keeps ClinVec vectors of that
    width beside the code embedding (learned_projection)."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, n_sexes: int, n_states: int, projection_dim: int = 0):
        super().__init__(encoder_config(cfg, vocab_size, n_sexes, n_states, projection_dim))


class PretrainModel(nn.Module):
    """`encoder` + masked-code head + optional PLOS head. `plos_over_padding`: the PLOS head sums the last
    hidden states of every position, padding included, as upstream's ExMedBertPlosHead does (its released
    model was trained so); by default over real positions only."""

    def __init__(self, encoder: modeling.ExMedBertModel, vocab_size: int, plos: bool, plos_over_padding: bool = False):
        super().__init__()
        h = encoder.config.hidden_size
        self.encoder = encoder
        self.transform = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.LayerNorm(h, eps=encoder.config.layer_norm_eps))
        self.decoder = nn.Linear(h, vocab_size)
        self.plos = nn.Linear(h, 2) if plos else None
        self.plos_over_padding = plos_over_padding

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden = self.encoder(**model_inputs(batch)).last_hidden_state
        plos = None
        if self.plos is not None:
            pooled = hidden.sum(dim=1) if self.plos_over_padding else modeling.sum_pool(hidden, batch["attention"])
            plos = self.plos(pooled)
        return self.decoder(self.transform(hidden)), plos


class EndpointModel(modeling.ExMedBertForSequenceClassification):
    """The fine-tuned model, called with a batch: one logit per patient."""

    def __init__(self, encoder: Encoder):
        super().__init__(encoder.config, encoder)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return super().forward(**model_inputs(batch)).logits.squeeze(-1)


# Upstream's ExMedBertForMaskedLM state dict (exmed_bert/models/model.py: `bert` an ExMedBertModel over
# transformers' BertEncoder, `code_classifier` BertOnlyMLMHead, `plos_classifier` ExMedBertPlosHead) →
# PretrainModel, after `fuse_attention` has joined each layer's query, key and value into torch's one
# input projection. The frozen position table goes to the encoder's stored visit table (`visit_table:
# stored`). Dropped: the position-id buffer (0, 1, 2, ...: no learned value) and the decoder's bias under
# its second name: transformers ties `predictions.decoder.bias` to `predictions.bias`, so a .bin holds the
# same tensor twice (safetensors once).
UPSTREAM = KeyMap(
    renames=(
        (r"^\.bert\.embeddings\.code_embeddings\.", ".encoder.code."),
        (r"^\.bert\.embeddings\.entity_embeddings\.", ".encoder.code_type."),
        (r"^\.bert\.embeddings\.age_embeddings\.", ".encoder.age."),
        (r"^\.bert\.embeddings\.sex_embeddings\.", ".encoder.sex."),
        (r"^\.bert\.embeddings\.state_embeddings\.", ".encoder.state."),
        (r"^\.bert\.embeddings\.layer_norm\.", ".encoder.norm."),
        (r"^\.bert\.embeddings\.positional_embeddings\.weight$", ".encoder.visit_table"),
        (r"^\.bert\.encoder\.layer\.(\d+)\.", r".encoder.layers.layers.\1."),
        (r"\.attention\.self\.in_proj_(weight|bias)$", r".self_attn.in_proj_\1"),
        (r"\.attention\.output\.dense\.", ".self_attn.out_proj."),
        (r"\.attention\.output\.LayerNorm\.", ".norm1."),
        (r"\.intermediate\.dense\.", ".linear1."),
        (r"\.output\.dense\.", ".linear2."),
        (r"\.output\.LayerNorm\.", ".norm2."),
        (r"^\.code_classifier\.predictions\.transform\.dense\.", ".transform.0."),
        (r"^\.code_classifier\.predictions\.transform\.LayerNorm\.", ".transform.2."),
        (r"^\.code_classifier\.predictions\.decoder\.weight$", ".decoder.weight"),
        (r"^\.code_classifier\.predictions\.bias$", ".decoder.bias"),
        (r"^\.plos_classifier\.los_classifier\.", ".plos."),
    ),
    dropped=r"^bert\.embeddings\.position_ids$|^code_classifier\.predictions\.decoder\.bias$",
)
QKV = ("query", "key", "value")


def fuse_attention(tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """`tensors` with each BERT layer's separate query, key and value projections (weight and bias) joined
    in that order into `attention.self.in_proj_{weight,bias}`, the layout of torch's multi-head attention; a
    layer that lacks one of the three is one line naming it."""
    fused = dict(tensors)
    prefixes = {m.group(1) for key in tensors if (m := re.match(r"(.*\.attention\.self)\.(query|key|value)\.", key))}
    for prefix in sorted(prefixes):
        for kind in ("weight", "bias"):
            names = [f"{prefix}.{part}.{kind}" for part in QKV]
            missing = [n for n in names if n not in tensors]
            if missing:
                raise CheckpointError(f"{source}: lacks {missing[0]!r} beside the layer's other attention "
                                      "projections: a cut or renamed checkpoint")
            shapes = [list(tensors[n].shape) for n in names]
            if any(shape != shapes[0] for shape in shapes):
                raise CheckpointError(f"{source}: {prefix}'s query, key and value {kind}s have shapes {shapes}, "
                                      "expected three equal ones: another configuration of the model?")
            fused[f"{prefix}.in_proj_{kind}"] = torch.cat([fused.pop(n) for n in names])
    return fused


def initialise(model: nn.Module, method: str) -> None:
    """Weights of every linear and embedding layer by `method`; biases 0, LayerNorms 1 and 0."""
    for module in model.modules():
        modeling.initialise_module(module, method)


def load_clinvec(encoder: Encoder, vectors: np.ndarray, initialised: np.ndarray) -> None:
    """Copy the ClinVec rows into the code embedding (or the projection's inputs), rescaled so that their
    spread matches the freshly initialised rows: the other embeddings are summed with them."""
    rows = torch.from_numpy(np.flatnonzero(initialised))
    values = torch.from_numpy(vectors[initialised]).float()
    with torch.no_grad():
        scale = encoder.code.weight.std() / values.std().clamp_min(1e-12)
        if encoder.code_vectors is not None:
            encoder.code_vectors[rows] = values * scale
            encoder.code.weight[rows] = 0.0
        else:
            encoder.code.weight[rows] = values * scale


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
