"""ExMed-BERT: a BERT encoder over medical-code sequences, with its pretraining and endpoint heads.

Embeddings: code + code type + age + sex + state + visit position, summed, then LayerNorm and
dropout; the visit position uses the fixed sinusoidal table of "Attention is all you need" and is
not trained. Pretraining: masked-code prediction (a transform and a decoder over the vocabulary) and
optionally prolonged length of stay (PLOS: two classes on the sum of the last hidden states).
Fine-tuning: sum pooling of the last hidden states → one logit, trained with BCE and a positive weight.
"""

import math

import numpy as np
import torch
from torch import nn

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


def sinusoidal_table(positions: int, dim: int) -> torch.Tensor:
    position = torch.arange(positions, dtype=torch.float64)[:, None]
    rate = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate)[:, :dim // 2]
    return table.float()


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, n_sexes: int, n_states: int, projection_dim: int = 0):
        super().__init__()
        sizes = preset_sizes(cfg)
        hidden = self.hidden_size = sizes["hidden_size"]
        if hidden % sizes["heads"]:
            raise ValueError(f"hidden size {hidden} is not a multiple of {sizes['heads']} heads")
        self.max_age, self.max_visits = cfg.max_age, cfg.max_visits
        self.code = nn.Embedding(vocab_size, hidden, padding_idx=PAD)
        self.code_type = nn.Embedding(len(TYPE_IDS), hidden)
        self.age = nn.Embedding(cfg.max_age + 1, hidden)
        self.sex = nn.Embedding(n_sexes, hidden)
        self.state = nn.Embedding(n_states, hidden)
        self.register_buffer("visit_table", sinusoidal_table(cfg.max_visits + 1, hidden), persistent=False)
        # learned_projection: the 128-d ClinVec vectors of the initialised codes, mapped to hidden size.
        self.code_vectors = nn.Parameter(torch.zeros(vocab_size, projection_dim)) if projection_dim else None
        self.projection = nn.Linear(projection_dim, hidden, bias=False) if projection_dim else None
        self.norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(hidden, sizes["heads"], sizes["intermediate_size"], cfg.dropout,
                                           activation="gelu", batch_first=True)
        self.layers = nn.TransformerEncoder(layer, sizes["layers"], enable_nested_tensor=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = batch["tokens"]
        x = (self.code(tokens) + self.code_type(batch["types"]) + self.age(batch["ages"].clamp(0, self.max_age))
             + self.sex(batch["sex"])[:, None] + self.state(batch["state"])[:, None]
             + self.visit_table[batch["visits"].clamp(0, self.max_visits)])
        if self.projection is not None:
            x = x + self.projection(self.code_vectors[tokens])
        x = self.dropout(self.norm(x))
        return self.layers(x, src_key_padding_mask=batch["attention"] == 0)


def sum_pool(hidden: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    return (hidden * attention[..., None]).sum(dim=1)


class PretrainModel(nn.Module):
    def __init__(self, encoder: Encoder, vocab_size: int, plos: bool):
        super().__init__()
        h = encoder.hidden_size
        self.encoder = encoder
        self.transform = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.LayerNorm(h))
        self.decoder = nn.Linear(h, vocab_size)
        self.plos = nn.Linear(h, 2) if plos else None

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden = self.encoder(batch)
        plos = self.plos(sum_pool(hidden, batch["attention"])) if self.plos is not None else None
        return self.decoder(self.transform(hidden)), plos


class EndpointModel(nn.Module):
    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder
        self.classifier = nn.Linear(encoder.hidden_size, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(sum_pool(self.encoder(batch), batch["attention"])).squeeze(-1)


def initialise(model: nn.Module, method: str) -> None:
    """Weights of every linear and embedding layer by `method`; biases 0, LayerNorms 1 and 0."""
    fill = {"orthogonal": nn.init.orthogonal_, "xavier": nn.init.xavier_uniform_,
            "kaiming": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu")}[method]
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Embedding):
            fill(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.MultiheadAttention):
            fill(module.in_proj_weight)
            nn.init.zeros_(module.in_proj_bias)


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
