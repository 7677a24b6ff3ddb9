"""Tiny BERT checkpoints built locally, standing in for hub models in smoke runs and tests.

The result is an ordinary `save_pretrained` directory (config, weights, WordPiece tokenizer trained
on the given corpus), so it goes through exactly the code path a real hub checkpoint does; only the
name is a local directory instead of a hub id.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertModel, BertTokenizerFast

from medrepro import atomic

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass
class TinyBertConfig:
    hidden_size: int = 64
    layers: int = 2
    heads: int = 2
    intermediate_size: int = 128
    vocab_size: int = 512
    max_position: int = 128
    lowercase: bool = True
    dropout: float = 0.1
    seed: int = 0


def build_tiny_bert(directory: str | Path, corpus: Iterable[str], cfg: TinyBertConfig) -> Path:
    """Train a WordPiece vocabulary on `corpus`, initialise a BERT, save both to `directory`."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=cfg.lowercase, strip_accents=cfg.lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=cfg.vocab_size, special_tokens=SPECIAL_TOKENS)
    tokenizer.train_from_iterator(list(corpus), trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast = BertTokenizerFast(tokenizer_object=tokenizer, do_lower_case=cfg.lowercase,
                             model_max_length=cfg.max_position)

    bert_cfg = BertConfig(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position, hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout, pad_token_id=tokenizer.token_to_id("[PAD]"),
    )
    torch.manual_seed(cfg.seed)
    # No pooler: towers here read the raw [CLS] state, and an unused pooler would break DDP.
    model = BertModel(bert_cfg, add_pooling_layer=False)
    with atomic.atomic_dir(directory) as tmp:
        model.save_pretrained(tmp)
        fast.save_pretrained(tmp)
    return Path(directory)
