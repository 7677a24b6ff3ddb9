"""The cross-encoder: a Hugging Face sequence classifier with one logit scoring a (mention, name) pair,
each with what tells ambiguous names apart (the mention's context, the name's semantic types).

One output logit with a sigmoid is the layout sentence-transformers' `CrossEncoder` expects of a
binary re-ranker, so the exported directory loads in both libraries and scores the same.
"""

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from experiments.cross_encoder.mining import Pair
from medrepro.errors import DataError


def load(path: str | Path) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The classifier (a fresh one-logit head on an encoder, or an exported cross-encoder) and its tokenizer.

    `path` is a hub id or a local directory; a path that names a missing local directory (the export
    of a run that has not trained yet) is one line, not a hub error about repository ids.
    """
    if (str(path).startswith((".", "/")) or Path(path).parent.is_dir()) and not Path(path).is_dir():
        raise DataError(f"model directory {path} not found: train first (`medrepro cross_encoder train`), "
                        "or pass the directory of an exported cross-encoder")
    model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1)
    return model, AutoTokenizer.from_pretrained(str(path))


class PairDataset(Dataset):
    def __init__(self, pairs: Sequence[Pair]) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[str, str, int]:
        p = self.pairs[i]
        return *p.inputs, p.label


def collate(tokenizer: PreTrainedTokenizerBase, max_length: int) -> Callable[[list], dict[str, torch.Tensor]]:
    def fn(items: list[tuple[str, str, int]]) -> dict[str, torch.Tensor]:
        texts, names, labels = zip(*items, strict=True)
        batch = tokenizer(list(texts), list(names), padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt")
        batch = dict(batch)
        batch["labels"] = torch.tensor(labels, dtype=torch.float32)
        return batch

    return fn


def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    labels = batch["labels"]
    # Labels stay out of the model call: with one label, transformers would fit a regression (MSE).
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.squeeze(-1)
    return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels), {}


@torch.inference_mode()
def pair_logits(model: nn.Module, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]],
                batch_size: int, max_length: int) -> np.ndarray:
    """One logit per (text, name) pair, in input order. Pairs are batched by length so that batches
    carry little padding; this is the scoring path of evaluation, linking and the benchmark."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    out = np.empty(len(pairs), dtype=np.float32)
    for start in range(0, len(pairs), batch_size):
        rows = order[start:start + batch_size]
        batch = tokenizer([pairs[i][0] for i in rows], [pairs[i][1] for i in rows], padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt").to(device)
        out[rows] = model(**batch).logits[:, 0].float().cpu().numpy()
    model.train(was_training)
    return out
