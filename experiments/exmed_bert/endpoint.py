"""The fine-tuned endpoint model: built from encoder weights, scoring patients in batches."""

import numpy as np
import torch

from experiments.exmed_bert import dataset
from experiments.exmed_bert.config import ExMedBertConfig
from experiments.exmed_bert.model import Encoder, EndpointModel, initialise


class Records(torch.utils.data.Dataset):
    def __init__(self, records: list[dict]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        return self.records[i]


def endpoint_model(cfg: ExMedBertConfig, vocab: dataset.Vocab, encoder_state: dict[str, torch.Tensor]
                   ) -> EndpointModel:
    projection = encoder_state["code_vectors"].shape[1] if "code_vectors" in encoder_state else 0
    model = EndpointModel(Encoder(cfg.model, len(vocab.tokens), len(vocab.sexes), len(vocab.states), projection))
    initialise(model, cfg.model.init)
    model.encoder.load_state_dict(encoder_state)
    return model


def scores(model: EndpointModel, records: list[dict], batch_size: int, plos_days: float) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(records), batch_size):
            batch = dataset.pad_batch(records[start:start + batch_size], plos_days)
            batch = {k: v.to(device) for k, v in batch.items()}
            out.append(torch.sigmoid(model(batch)).double().cpu().numpy())
    return np.concatenate(out)
