"""The authors' released SapBERT (cambridgeltl/SapBERT-from-PubMedBERT-fulltext) as our bi-encoder, for
`evaluate --weights`.

The release is a transformers BERT directory: config.json, the tokenizer's files and the weights
(pytorch_model.bin and/or model.safetensors), written by `save_pretrained` of the BertModel upstream trains
(src/model_wrapper.py: Model_Wrapper.save_model). It is read here without running code from it: the config
as JSON into a BertConfig, the weights with `weights_only` or safetensors, loaded through `SAPBERT` strictly.

Upstream's embedding rule (src/model_wrapper.py, embed_dense, and evaluation/utils.py) is kept: names and
mentions lower-cased (its loaders lower-case the strings, its tokenizer is loaded with do_lower_case=True),
at most 25 tokens, the last layer's [CLS] vector before the pooler, and candidates ranked by the raw inner
product of those vectors (get_score_matrix: cosine=False), not by cosine as the trained pipeline's
bi-encoder does.

`evaluate_published` runs it as the linker it is, on the prepared data `evaluate` reads: every concept name
of concepts.jsonl encoded into an index of `index`'s kind (flat: exact, as upstream searches), each linkable
test mention (the mentions `evaluate` links) answered by its nearest concepts, acc@1 and acc@5 with intervals
that resample documents, beside the trivial linker that answers every mention with the concepts most
frequent among the training mentions. There is no re-ranker here: the row is the released bi-encoder alone.
"""

import json
from pathlib import Path

import numpy as np
from transformers import BertConfig, BertModel, BertTokenizerFast

from experiments.cross_encoder.config import CrossEncoderConfig
from experiments.cross_encoder.readers import read_concepts, read_mentions
from experiments.cross_encoder.records import pair_split
from experiments.cross_encoder.retrieval import BiEncoder, NameIndex, build_index, configure_search, name_rows
from experiments.cross_encoder.scoring import accuracy_at
from medrepro import plots
from medrepro.errors import CheckpointError, DataError
from medrepro.published import KeyMap, load_published, read_tensors
from medrepro.results import Evaluation

RELEASE = "SapBERT's released directory (config.json, vocab.txt and pytorch_model.bin or model.safetensors)"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# metrics.json: the linker's acc@1 and acc@5 (the trained variants' `acc1` is their re-ranked linking's).
HEADLINE = {"acc1": "linking/biencoder_acc_at_1", "acc5": "linking/biencoder_acc_at_5"}
# embed_dense's `max_length=25` (src/model_wrapper.py), whatever `index.max_length` says.
MAX_LENGTH = 25

# The release's names are BertModel's own (save_pretrained of the BertModel upstream trains). A BERT saved
# from inside a task model carries them under `bert.`, which is taken off. Dropped: the pooler, which the
# embedding never runs ([CLS] is read before it: upstream README, "use [CLS] (before pooler)"); the
# pretraining heads (`cls.*`) of a checkpoint saved with them; and `embeddings.position_ids`, the constant
# 0..n-1 positions that transformers before 4.31 saved as a buffer (upstream pins 4.4.2, requirements.txt).
SAPBERT = KeyMap(renames=((r"^\.bert\.", "."),),
                 dropped=r"^(bert\.)?(pooler\.|embeddings\.position_ids$)|^cls\.")


def load_release(weights: Path, batch_size: int) -> BiEncoder:
    """The released SapBERT as a bi-encoder with upstream's embedding rule (see above), on the default device."""
    if not weights.is_dir():
        raise CheckpointError(f"{weights}: not a directory; --weights takes {RELEASE}")
    config_file = weights / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{weights}: no config.json in this directory; --weights takes {RELEASE}")
    try:
        fields = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{config_file}: not JSON ({e}); --weights takes {RELEASE}") from None
    if not isinstance(fields, dict) or fields.get("model_type") != "bert":
        found = fields.get("model_type") if isinstance(fields, dict) else type(fields).__name__
        raise CheckpointError(f"{config_file}: model_type {found!r}, expected 'bert'; --weights takes {RELEASE}")
    if not (weights / "vocab.txt").is_file():
        raise CheckpointError(f"{weights}: no vocab.txt (the tokenizer's vocabulary); --weights takes {RELEASE}")
    tensors = read_tensors(weights, RELEASE, WEIGHT_FILES)
    model = BertModel(BertConfig.from_dict(fields), add_pooling_layer=False)
    load_published(model, tensors, SAPBERT, weights, RELEASE)
    tokenizer = BertTokenizerFast.from_pretrained(str(weights), do_lower_case=True)
    return BiEncoder(model, tokenizer, MAX_LENGTH, batch_size, unit=False)


def evaluate_published(cfg: CrossEncoderConfig, weights: Path, out_dir: Path) -> Evaluation:
    """The released SapBERT alone linking the test mentions (see above)."""
    encoder = load_release(weights, cfg.index.batch_size)
    concepts, mentions = read_concepts(cfg.paths.prepared), read_mentions(cfg.paths.prepared)
    names, owners = name_rows(concepts)
    vectors = encoder.encode(names, desc="encoding concept names")
    index = NameIndex(configure_search(build_index(vectors, cfg.index), cfg.index), owners, names, concepts)
    position = {c.cui: i for i, c in enumerate(concepts)}
    gold = np.array([position.get(m.gold, -1) if m.gold else -1 for m in mentions], dtype=np.int64)
    split = np.array([pair_split(m) for m in mentions])
    test = np.flatnonzero((split == "test") & (gold >= 0))
    if test.size == 0:
        raise DataError(f"no test mention of {cfg.paths.prepared} resolves to a loaded concept: see "
                        "prepared/missing.json and prepared/summary.json")
    queries = encoder.encode([mentions[i].text for i in test], desc="encoding test mentions")
    # One search: the distinct concepts, and upstream's acc@5 over the first five names, a concept's several
    # names each taking a place.
    scores, rows = index.search(queries, 5)
    found, _, _ = index.distinct(scores, rows, 5)
    rows = rows[:, :5]
    by_name = np.where(rows >= 0, owners[np.maximum(rows, 0)], -1) == gold[test, None]
    frequent = most_frequent(gold[(split == "train") & (gold >= 0)], len(concepts), 5)
    documents = np.array([mentions[i].pmid for i in test])
    e = cfg.eval
    details = {"linking/mentions": float(test.size), "linking/documents": float(len(np.unique(documents))),
               **{f"linking/{key}": value for key, value in {
                   **accuracy_at(found == gold[test, None], documents, "biencoder", e.bootstrap, e.alpha, cfg.seed),
                   **accuracy_at(np.broadcast_to(frequent, (test.size, len(frequent))) == gold[test, None],
                                 documents, "most_frequent", e.bootstrap, e.alpha, cfg.seed)}.items()},
               "linking/biencoder_acc_at_5_by_name": float(by_name.any(axis=1).mean())}
    draw_plot(out_dir / "plots" / "linking.png", details)
    info = {"data": cfg.data.source, "checkpoint": str(weights),
            "protocol": "the released bi-encoder alone: [CLS] of the lower-cased name or mention (at most "
                        f"{MAX_LENGTH} tokens), raw inner product, {cfg.index.kind} index over {len(names)} names of "
                        f"{len(concepts)} concepts; acc@k over the top k distinct concepts of the linkable test "
                        "mentions, intervals resampling documents; baseline: the 5 concepts most frequent among "
                        "the training mentions",
            "selection": "none here: the released model was trained and chosen upstream (UMLS 2020AA synonyms)"}
    return Evaluation({short: details[name] for short, name in HEADLINE.items()}, details, info)


def most_frequent(gold: np.ndarray, n_concepts: int, k: int) -> np.ndarray:
    """The `k` concepts most frequent in `gold` (concept indices), the lower index first on ties."""
    return np.argsort(-np.bincount(gold, minlength=n_concepts), kind="stable")[:k]


def draw_plot(path: Path, details: dict[str, float]) -> None:
    """acc@1 and acc@5 of the released SapBERT and of the most frequent training concepts."""
    orders = {"biencoder": "SapBERT (released)", "most_frequent": "most frequent training concepts"}
    plots.per_class_png({f"acc@{k}": {f"{label}{suffix}": details[f"linking/{name}_acc_at_{k}{suffix}"]
                                      for name, label in orders.items() for suffix in ("", "_ci_low", "_ci_high")}
                         for k in (1, 5)}, path,
                        f"linking accuracy, {int(details['linking/mentions'])} test mentions (95 % intervals by "
                        "document)", ylabel="share of mentions", xlabel="gold concept among the top k")
