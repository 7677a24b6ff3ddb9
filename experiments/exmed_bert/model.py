"""ExMed-BERT for training: the encoder and endpoint model of modeling_exmed_bert.py (the one definition
of the architecture, which `export` saves) built from the experiment's config and called with the
dataset's batches, plus the pretraining heads.

Pretraining: masked-code prediction (a transform and a decoder over the vocabulary) and optionally
prolonged length of stay (PLOS: two classes on the sum of the last hidden states). Fine-tuning: sum
pooling of the last hidden states → one logit, trained with BCE and a positive weight.
"""

import numpy as np
import torch
from torch import nn

from experiments.exmed_bert import modeling_exmed_bert as modeling
from experiments.exmed_bert.config import ModelConfig
from experiments.exmed_bert.dataset import PAD, TYPE_IDS

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
    def __init__(self, encoder: Encoder, vocab_size: int, plos: bool):
        super().__init__()
        h = encoder.config.hidden_size
        self.encoder = encoder
        self.transform = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.LayerNorm(h))
        self.decoder = nn.Linear(h, vocab_size)
        self.plos = nn.Linear(h, 2) if plos else None

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden = self.encoder(**model_inputs(batch)).last_hidden_state
        plos = self.plos(modeling.sum_pool(hidden, batch["attention"])) if self.plos is not None else None
        return self.decoder(self.transform(hidden)), plos


class EndpointModel(modeling.ExMedBertForSequenceClassification):
    """The fine-tuned model, called with a batch: one logit per patient."""

    def __init__(self, encoder: Encoder):
        super().__init__(encoder.config, encoder)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return super().forward(**model_inputs(batch)).logits.squeeze(-1)


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
