"""ExMed-BERT as a transformers model: the one definition of the architecture. The training code builds
it (experiments/exmed_bert/model.py) and `medrepro exmed_bert export` saves it with `save_pretrained`.

This module imports torch and transformers only: the export copies it beside the weights, so that
`AutoModel.from_pretrained(directory, trust_remote_code=True)` rebuilds the model without this repository.

Inputs, (batch, positions) unless said otherwise; an export's vocabulary.json maps codes to these ids:
    input_ids        code ids: the five specials [PAD] [UNK] [CLS] [SEP] [MASK], then `{code}:{vocab}` tokens
    code_type_ids    0 special, 1 ICD-10-CM, 2 ATC, 3 CPT
    age_ids          whole years at the event (event year - birth year), clamped to [0, max_age]
    visit_ids        the visit's number ([CLS] 0, then 1, 2, ...), clamped to [0, max_visits]
    sex_ids          (batch,) one per patient, or (batch, positions) one per position
    state_ids        (batch,) one per patient, or (batch, positions) one per position
    attention_mask   1 on real positions, 0 on padding

Embeddings: code + code type + age + sex + state + visit position, summed, then LayerNorm and dropout;
the visit position uses the fixed sinusoidal table of "Attention is all you need" (not trained, not
saved: rebuilt from the config), or with `visit_table: stored` a fixed table saved with the weights:
upstream ExMed-BERT builds a sinusoidal table too, but its weight initialisation then overwrites it with
an orthogonal random matrix, which stays frozen, and its released model carries that matrix. Then a
PyTorch Transformer encoder. The endpoint head sums the last hidden states over real positions and maps
the sum to one logit: sigmoid(logit) is the probability of the endpoint.
"""

import math

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, SequenceClassifierOutput


class ExMedBertConfig(PreTrainedConfig):
    model_type = "exmed_bert"

    # Code tokens (specials included), code types, and the sex and state categories ([UNK] first).
    vocab_size: int = 5
    code_types: int = 4
    sexes: int = 4
    states: int = 1
    hidden_size: int = 32
    num_hidden_layers: int = 1
    num_attention_heads: int = 1
    intermediate_size: int = 64
    dropout: float = 0.1
    max_age: int = 120
    max_visits: int = 512
    # The width of the ClinVec vectors kept beside the code embedding (`learned_projection`); 0: none.
    projection_dim: int = 0
    # How weights a checkpoint lacks are drawn: orthogonal, xavier or kaiming (the experiment's model.init).
    initializer: str = "xavier"
    pad_token_id: int = 0
    # Upstream ExMed-BERT's released model: 1e-12 (BERT's) and its stored position table; the defaults are
    # torch's LayerNorm eps and the sinusoidal table, with which the suite trains.
    layer_norm_eps: float = 1e-5
    visit_table: str = "sinusoidal"


def sinusoidal_table(positions: int, dim: int) -> torch.Tensor:
    position = torch.arange(positions, dtype=torch.float64)[:, None]
    rate = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate)[:, :dim // 2]
    return table.float()


def visit_table(config: ExMedBertConfig) -> torch.Tensor:
    """The visit-position table of `config.visit_table`: `sinusoidal`, or `stored` (zeros until the
    weights that carry it are loaded)."""
    if config.visit_table == "sinusoidal":
        return sinusoidal_table(config.max_visits + 1, config.hidden_size)
    if config.visit_table == "stored":
        return torch.zeros(config.max_visits + 1, config.hidden_size)
    raise ValueError(f"visit_table {config.visit_table!r}: expected sinusoidal or stored")


def per_position(embedded: torch.Tensor) -> torch.Tensor:
    """A patient's embedding (batch, hidden) broadcast over the positions; one per position kept as it is."""
    return embedded[:, None] if embedded.ndim == 2 else embedded


def sum_pool(hidden: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    return (hidden * attention[..., None]).sum(dim=1)


def initialise_module(module: nn.Module, method: str) -> None:
    """The weights of a linear, embedding or attention input projection by `method`; biases 0, LayerNorms
    1 and 0, an embedding's padding row 0."""
    fill = {"orthogonal": nn.init.orthogonal_, "xavier": nn.init.xavier_uniform_,
            "kaiming": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu")}[method]
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


class ExMedBertPreTrainedModel(PreTrainedModel):
    config_class = ExMedBertConfig
    base_model_prefix = "encoder"

    def init_weights(self) -> None:
        """Nothing at construction: the weights stay as torch's module constructors drew them. The training
        code initialises them itself once the whole model is built (model.initialise), from the global RNG
        stream, which a pass here would move. Loading fills what a checkpoint lacks through `_init_weights`."""

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, ExMedBertModel):
            if self.config.visit_table == "sinusoidal":  # a stored table comes with the weights
                module.visit_table.copy_(visit_table(self.config))
            if module.code_vectors is not None:
                nn.init.zeros_(module.code_vectors)
        else:
            initialise_module(module, self.config.initializer)


class ExMedBertModel(ExMedBertPreTrainedModel):
    """The encoder: the last hidden states of a batch of code sequences."""

    # Loaded from an endpoint model's directory, the head's weights are left out on purpose.
    _keys_to_ignore_on_load_unexpected = (r"^classifier\.",)

    def __init__(self, config: ExMedBertConfig):
        super().__init__(config)
        hidden, heads = config.hidden_size, config.num_attention_heads
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not a multiple of {heads} heads")
        # The order of creation fixes which random numbers each module's constructor draws: kept as it was
        # when the committed runs were trained.
        self.code = nn.Embedding(config.vocab_size, hidden, padding_idx=config.pad_token_id)
        self.code_type = nn.Embedding(config.code_types, hidden)
        self.age = nn.Embedding(config.max_age + 1, hidden)
        self.sex = nn.Embedding(config.sexes, hidden)
        self.state = nn.Embedding(config.states, hidden)
        self.register_buffer("visit_table", visit_table(config), persistent=config.visit_table == "stored")
        # learned_projection: the 128-d ClinVec vectors of the initialised codes, mapped to hidden size.
        projection = config.projection_dim
        self.code_vectors = nn.Parameter(torch.zeros(config.vocab_size, projection)) if projection else None
        self.projection = nn.Linear(projection, hidden, bias=False) if projection else None
        self.norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(hidden, heads, config.intermediate_size, config.dropout,
                                           activation="gelu", layer_norm_eps=config.layer_norm_eps, batch_first=True)
        self.layers = nn.TransformerEncoder(layer, config.num_hidden_layers, enable_nested_tensor=False)
        self.post_init()

    def forward(self, input_ids: torch.Tensor, code_type_ids: torch.Tensor, age_ids: torch.Tensor,
                visit_ids: torch.Tensor, sex_ids: torch.Tensor, state_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> BaseModelOutput:
        x = (self.code(input_ids) + self.code_type(code_type_ids) + self.age(age_ids.clamp(0, self.config.max_age))
             + per_position(self.sex(sex_ids)) + per_position(self.state(state_ids))
             + self.visit_table[visit_ids.clamp(0, self.config.max_visits)])
        if self.projection is not None:
            x = x + self.projection(self.code_vectors[input_ids])
        x = self.dropout(self.norm(x))
        return BaseModelOutput(last_hidden_state=self.layers(x, src_key_padding_mask=attention_mask == 0))


class ExMedBertForSequenceClassification(ExMedBertPreTrainedModel):
    """The fine-tuned endpoint model: sum pooling of the last hidden states → one logit."""

    def __init__(self, config: ExMedBertConfig, encoder: ExMedBertModel | None = None):
        """`encoder`: an encoder already built (the training code's, about to receive pretrained weights);
        by default a new one from `config`."""
        super().__init__(config)
        self.encoder = encoder if encoder is not None else ExMedBertModel(config)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(self, input_ids: torch.Tensor, code_type_ids: torch.Tensor, age_ids: torch.Tensor,
                visit_ids: torch.Tensor, sex_ids: torch.Tensor, state_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> SequenceClassifierOutput:
        hidden = self.encoder(input_ids, code_type_ids, age_ids, visit_ids, sex_ids, state_ids,
                              attention_mask).last_hidden_state
        return SequenceClassifierOutput(logits=self.classifier(sum_pool(hidden, attention_mask)))
