"""The cross-encoder: a Hugging Face sequence classifier with one logit scoring a (mention, name) pair,
each with what tells ambiguous names apart (the mention's context, the name's semantic types).

One output logit with a sigmoid is the layout sentence-transformers' `CrossEncoder` expects of a
binary re-ranker, so the exported directory loads in both libraries and scores the same.
"""

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tokenizers import Encoding, Tokenizer
from torch import nn
from torch.utils.data import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerFast

from experiments.cross_encoder import pair_text
from experiments.cross_encoder.records import Pair
from medrepro.device import default_device
from medrepro.errors import DataError
from medrepro.rundir import RunDir

# Pairs encoded per call of pair_logits' tokenizer: sorting by length works within a chunk, and a
# chunk's encodings stay small (64 batches of 256 pairs: about 30 MB) at any pair count.
CHUNK_BATCHES = 64


def load(path: str | Path) -> tuple[nn.Module, PreTrainedTokenizerFast]:
    """The classifier (a fresh one-logit head on an encoder, or an exported cross-encoder) and its tokenizer.

    `path` is a hub id or a local directory; a path that names a missing local directory (an export
    not written yet) is one line, not a hub error about repository ids.
    """
    if (str(path).startswith((".", "/")) or Path(path).parent.is_dir()) and not Path(path).is_dir():
        raise DataError(f"model directory {path} not found: train first (`medrepro cross_encoder train`, then "
                        "`medrepro cross_encoder export`), or pass the directory of an exported cross-encoder")
    model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1)
    return model, AutoTokenizer.from_pretrained(str(path))


def load_trained(start: str | Path, run: RunDir, which: str, variant: str) -> tuple[nn.Module, PreTrainedTokenizerFast]:
    """The raw (unfolded) weights of checkpoint `which` of `run` (`best`, `final` or a path; refused if
    trained for another variant), in the architecture and with the tokenizer of `start`, the model
    training started from; on the default device."""
    model, tokenizer = load(start)
    run.load_into(model, which, variant)
    return model.to(default_device()), tokenizer


class PairDataset(Dataset):
    def __init__(self, pairs: Sequence[Pair]) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[str, str, int]:
        p = self.pairs[i]
        return *pair_text.segments(p), p.label


def collate(tokenizer: PreTrainedTokenizerFast, max_length: int) -> Callable[[list], dict[str, torch.Tensor]]:
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
def pair_logits(model: nn.Module, tokenizer: PreTrainedTokenizerFast, pairs: Sequence[tuple[str, str]],
                batch_size: int, max_length: int) -> np.ndarray:
    """One logit per (text, name) pair, in input order: the scoring path of training's validation,
    calibration, evaluation, linking and the benchmark.

    At a small model's size the time goes to tokenisation and padding (profiled: `bench` (a)), so
    pairs are encoded `CHUNK_BATCHES` batches at a time in one call of the Rust tokenizer, without the
    transformers wrapper (whose per-call list flattening cost as much as the encoding), sorted by token
    count (the character count predicts it poorly: it left 1.6 times the real tokens in the batches),
    and each batch is padded on the right to its longest pair only. The token ids are the wrapper's
    with `truncation=True` (its longest-first strategy); the unit tests compare the logits.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # a copy: the settings stay ours
    backend.no_padding()
    backend.enable_truncation(max_length, strategy="longest_first", direction=tokenizer.truncation_side)
    inputs = [name for name in ("input_ids", "token_type_ids", "attention_mask") if name in tokenizer.model_input_names]
    out = np.empty(len(pairs), dtype=np.float32)
    chunk = batch_size * CHUNK_BATCHES
    for first in range(0, len(pairs), chunk):
        encodings = backend.encode_batch(list(pairs[first:first + chunk]))
        lengths = np.array([len(e.ids) for e in encodings])
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(encodings), batch_size):
            rows = order[start:start + batch_size]
            batch = _padded([encodings[r] for r in rows], int(lengths[rows].max()), tokenizer.pad_token_id)
            batch = {name: torch.from_numpy(batch[name]).to(device) for name in inputs}
            out[first + rows] = model(**batch).logits[:, 0].float().cpu().numpy()
    model.train(was_training)
    return out


def _padded(encodings: list[Encoding], width: int, pad_id: int) -> dict[str, np.ndarray]:
    """Token ids, segment ids and attention mask, padded on the right (BERT numbers positions from the
    first column, so left padding would shift them)."""
    ids = np.full((len(encodings), width), pad_id, dtype=np.int64)
    types = np.zeros((len(encodings), width), dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    for row, encoding in enumerate(encodings):
        n = len(encoding.ids)
        ids[row, :n], types[row, :n], mask[row, :n] = encoding.ids, encoding.type_ids, 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
