"""Tiny BERT checkpoints built locally, standing in for hub models in smoke runs and tests.

The result is an ordinary `save_pretrained` directory (config, weights, a WordPiece tokenizer whose
vocabulary comes from the given corpus), so it goes through exactly the code path a real hub
checkpoint does; only the name is a local directory instead of a hub id.
"""

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertModel, BertTokenizerFast

from medrepro import atomic
from medrepro.config_sections import TinyBertConfig

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def wordpiece_vocab(corpus: Iterable[str], size: int, lowercase: bool) -> dict[str, int]:
    """A WordPiece vocabulary: special tokens, every character (and its ## continuation), then whole
    words by frequency, ties broken alphabetically.

    tokenizers' WordPieceTrainer breaks ties between equally frequent merges in an order that
    changes from process to process, so two runs of the same seed would get different vocabularies
    and train different models. Built this way the vocabulary depends on the corpus alone, and
    nothing tokenizes to [UNK]: every character is in it.
    """
    normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    pre = pre_tokenizers.BertPreTokenizer()
    counts = Counter(word for text in corpus for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for word in counts for c in word})
    tokens = dict.fromkeys([*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars)])
    for word in sorted(counts, key=lambda w: (-counts[w], w)):
        if len(tokens) >= size:
            break
        tokens.setdefault(word)
    return {token: i for i, token in enumerate(tokens)}


def build_tiny_bert(directory: str | Path, corpus: Iterable[str], cfg: TinyBertConfig) -> Path:
    """Build a WordPiece vocabulary from `corpus`, initialise a BERT, save both to `directory`."""
    return save_bert(directory, corpus, cfg)


def save_bert(directory: str | Path, corpus: Iterable[str], cfg: TinyBertConfig, fill_vocab: bool = False,
              config_json: dict | None = None, tokenizer_json: dict | None = None, pooler: bool = False) -> Path:
    """A randomly initialised BERT of `cfg`'s shape and its tokenizer, saved with `save_pretrained`.

    `fill_vocab` pads the vocabulary with `[unusedN]` entries to exactly `cfg.vocab_size` (a real-size
    stand-in); `config_json` and `tokenizer_json` are fields written over the saved config.json and
    tokenizer_config.json (a published model's own, so that loading meets what the real files say);
    `pooler` keeps BERT's pooler, as published checkpoints do.
    """
    vocab = wordpiece_vocab(corpus, cfg.vocab_size, cfg.lowercase)
    if fill_vocab:
        if len(vocab) > cfg.vocab_size:
            raise ValueError(f"the corpus needs {len(vocab)} vocabulary entries, more than {cfg.vocab_size}")
        vocab.update({f"[unused{i}]": len(vocab) + i for i in range(cfg.vocab_size - len(vocab))})
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=cfg.lowercase, strip_accents=cfg.lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast = BertTokenizerFast(tokenizer_object=tokenizer, do_lower_case=cfg.lowercase,
                             model_max_length=cfg.max_position)

    bert_cfg = BertConfig(
        vocab_size=len(vocab), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position, hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout, pad_token_id=vocab["[PAD]"],
    )
    torch.manual_seed(cfg.seed)
    # No pooler by default: towers here read the raw [CLS] state, and an unused pooler would break DDP.
    model = BertModel(bert_cfg, add_pooling_layer=pooler)
    with atomic.atomic_dir(directory) as tmp:
        model.save_pretrained(tmp)
        fast.save_pretrained(tmp)
        for name, fields in (("config.json", config_json), ("tokenizer_config.json", tokenizer_json)):
            if fields:
                path = Path(tmp) / name
                path.write_text(json.dumps({**json.loads(path.read_text()), **fields}, indent=2))
    return Path(directory)
