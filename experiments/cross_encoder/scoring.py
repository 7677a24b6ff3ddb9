"""Linking scores: the cross-encoder over each mention's retrieved candidates, its combination with
the retriever's similarity, and the calibration that evaluate reports and export ships with the model.

A mention's candidates are the bi-encoder's top `eval.rerank_top_k` concepts (from mine's
candidates.npz), each shown under the name that retrieved it. The re-ranked order sorts them by

    cross-encoder logit + w × standardised bi-encoder cosine,

with w >= 0 chosen on held-out mentions (w = 0 is the cross-encoder alone; a large w keeps the
retriever's order). The cosine is standardised over the mention's candidates (minus their mean,
divided by their spread): cosine scales differ between encoders, and an untrained stand-in's top
cosines lie within 1e-5 of each other, which no fixed weight could put beside a logit. Both scores
carry evidence: the retriever saw every name, the cross-encoder reads the mention and the name together.

Intervals resample documents (MedMentions PMIDs), the independent unit: the mentions of one abstract
share its topic, its abbreviations and often its concepts, so they tend to succeed or fail together,
and resampling them (or their pairs) one by one would give intervals too narrow.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn
from transformers import PreTrainedTokenizerBase

from experiments.cross_encoder import model as cross
from experiments.cross_encoder import pair_text
from experiments.cross_encoder.config import CrossEncoderConfig
from experiments.cross_encoder.readers import (
    concept_type_names,
    read_candidates,
    read_concepts,
    read_mentions,
    read_names,
    read_pairs,
)
from experiments.cross_encoder.records import Concept, MentionRecord, Pair, pair_split
from medrepro import bootstrap
from medrepro.calibration import Scaler, fit_scaler
from medrepro.errors import DataError

# Candidate retrieval weights, per standard deviation of the cosine: from "cross-encoder alone" to
# "retriever order, cross-encoder breaking ties" for logits of a few units.
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0, 64.0)
SCALERS = ("platt", "temperature")
# The scaler `export` folds into the exported model's head (export.fold_platt): every copy of the
# calibration names it, so that the results say which probabilities the exported model returns.
FOLDED_SCALER = "platt"


@dataclass
class Candidates:
    """A split's linkable mentions and their top-k candidates, with both scores (n, k)."""

    mentions: np.ndarray  # indices into mentions.jsonl
    documents: np.ndarray  # each mention's document (PMID): what the intervals resample
    concepts: np.ndarray  # concept index per candidate, -1 where fewer than k were found
    bi: np.ndarray  # bi-encoder cosine, -inf where no candidate
    cross: np.ndarray  # cross-encoder logit, -inf where no candidate
    gold: np.ndarray  # gold concept index per mention

    @property
    def valid(self) -> np.ndarray:
        return self.concepts >= 0

    def standardised_bi(self) -> np.ndarray:
        """The cosine minus the mean of the mention's candidates, over their standard deviation (0 where
        all are equal or there is no candidate)."""
        valid, cos = self.valid, np.where(self.valid, self.bi, 0.0)
        count = np.maximum(valid.sum(axis=1, keepdims=True), 1)
        mean = cos.sum(axis=1, keepdims=True) / count
        spread = np.sqrt((np.where(valid, cos - mean, 0.0) ** 2).sum(axis=1, keepdims=True) / count)
        return np.where(valid & (spread > 0), (cos - mean) / np.where(spread > 0, spread, 1.0), 0.0)

    def combined(self, weight: float) -> np.ndarray:
        return np.where(self.valid, np.where(self.valid, self.cross, 0.0) + weight * self.standardised_bi(), -np.inf)

    def subset(self, rows: np.ndarray) -> "Candidates":
        """The mentions where `rows` (a boolean mask over mentions) is true."""
        return Candidates(self.mentions[rows], self.documents[rows], self.concepts[rows], self.bi[rows],
                          self.cross[rows], self.gold[rows])

    def hits(self, score: np.ndarray | None = None) -> np.ndarray:
        """(n, k) bool: the gold concept at each rank of the order by `score` (None: the retriever's)."""
        concepts = self.concepts if score is None else np.take_along_axis(
            self.concepts, np.argsort(-score, axis=1, kind="stable"), axis=1)
        return concepts == self.gold[:, None]


def score_candidates(cfg: CrossEncoderConfig, model: nn.Module, tokenizer: PreTrainedTokenizerBase,
                     split: str) -> Candidates:
    """Cross-encoder logits for the top `eval.rerank_top_k` candidates of every linkable mention of
    `split` (a pair split of mining: train, dev, calibration or test)."""
    mentions = read_mentions(cfg.paths.prepared)
    cands = read_candidates(cfg.paths.mined)
    names = [row["name"] for row in read_names(cfg.paths.index)]
    types = concept_type_names(cfg.paths.prepared, read_concepts(cfg.paths.prepared))
    k = cfg.eval.rerank_top_k
    chosen = np.array([i for i, m in enumerate(mentions) if pair_split(m) == split and cands["gold"][i] >= 0],
                      dtype=np.int64)
    if chosen.size == 0:
        raise DataError(f"no {split} mention resolves to a loaded concept: see prepared/missing.json and "
                        "prepared/summary.json")
    concepts, rows, bi = cands["concepts"][chosen, :k], cands["rows"][chosen, :k], cands["scores"][chosen, :k]
    valid = concepts >= 0
    pairs = [(pair_text.mention_input(mentions[i].text, mentions[i].left, mentions[i].right),
              pair_text.candidate_input(names[r], types[c]))
             for i, rs, cs, ok in zip(chosen, rows, concepts, valid, strict=True)
             for r, c in zip(rs[ok], cs[ok], strict=True)]
    logits = np.full(concepts.shape, -np.inf, dtype=np.float64)
    logits[valid] = cross.pair_logits(model, tokenizer, pairs, cfg.eval.batch_size, cfg.max_length)
    documents = np.array([mentions[i].pmid for i in chosen])
    return Candidates(chosen, documents, concepts, np.where(valid, bi, -np.inf).astype(np.float64), logits,
                      cands["gold"][chosen])


def ambiguous(texts: Sequence[str], concepts: Sequence[Concept]) -> np.ndarray:
    """Per mention text, whether it is a name (compared case-insensitively) of concepts with different
    semantic types: the string alone cannot settle the link, its context and the types can."""
    types_of: dict[str, set[tuple[str, ...]]] = {}
    for concept in concepts:
        for name in concept.names:
            types_of.setdefault(name.casefold(), set()).add(concept.types)
    return np.array([len(types_of.get(text.casefold(), ())) > 1 for text in texts], dtype=bool)


def fit_retrieval_weight(candidates: Candidates) -> float:
    """The weight of WEIGHTS with the best acc@1 on these (held-out) mentions; the smallest on ties."""
    accuracy = [candidates.hits(candidates.combined(w))[:, 0].mean() for w in WEIGHTS]
    return WEIGHTS[int(np.argmax(accuracy))]


def fit_calibration(cfg: CrossEncoderConfig, model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> dict:
    """Platt and temperature scalers and the retrieval weight, fitted on the calibration half of dev:
    pairs and mentions that neither trained the model nor chose its checkpoint."""
    pairs = read_pairs(cfg.paths.mined, "calibration")
    logits = cross.pair_logits(model, tokenizer, [pair_text.segments(p) for p in pairs], cfg.eval.batch_size,
                               cfg.max_length)
    labels = np.array([p.label for p in pairs])
    scalers = {name: fit_scaler(name, logits, labels) for name in SCALERS}
    weight = fit_retrieval_weight(score_candidates(cfg, model, tokenizer, "calibration"))
    return {"fitted_on": f"the calibration half of dev: {len(pairs)} pairs, "
                         f"{len({p.mention for p in pairs})} mentions",
            "default": cfg.eval.calibration, "retrieval_weight": weight,
            **{name: {"a": s.a, "b": s.b, "temperature": s.temperature} for name, s in scalers.items()},
            "folded_into_weights": FOLDED_SCALER}


def scaler_of(calibration: dict, method: str) -> Scaler:
    if method == "none":
        return Scaler()
    return Scaler(method, calibration[method]["a"], calibration[method]["b"])


def pair_documents(pairs: Sequence[Pair], mentions: Sequence[MentionRecord]) -> np.ndarray:
    """The document (PMID) of each pair's mention (`mentions` as read from mentions.jsonl): the unit
    that pair intervals resample."""
    return np.array([mentions[p.mention].pmid for p in pairs])


def f1_by_document(labels: np.ndarray, predicted: np.ndarray, documents: np.ndarray, n_boot: int, alpha: float,
                   seed: int) -> bootstrap.Interval:
    """Pair F1 with a bootstrap interval that resamples documents with all their mentions' pairs: a
    mention's pairs share its text, and a document's mentions its context, so neither pairs nor
    mentions are independent."""
    return bootstrap.bootstrap_clusters(bootstrap.f1_binary_stat(labels, predicted), documents, n_boot, alpha, seed)


def pair_baselines(labels: np.ndarray) -> dict[str, float]:
    """What a pair scorer that learned nothing scores at these pairs' positive rate p: answering "match"
    for every pair has precision p and recall 1, so F1 2p / (1 + p); a constant score ranks nothing, so
    its PR-AUC (average precision) is p and its ROC-AUC 0.5, and the constant p has Brier p (1 - p)."""
    p = float(np.mean(labels))
    return {"baseline/all_positive/f1": 2 * p / (1 + p), "baseline/prevalence/pr_auc": p,
            "baseline/prevalence/brier": p * (1 - p)}


def linking_accuracy(candidates: Candidates, weight: float, n_boot: int, alpha: float, seed: int) -> dict[str, float]:
    """acc@1 and acc@5 of the retriever, of the cross-encoder alone and of the combined order, with
    intervals on each and on the paired (same mentions) acc@1 differences, resampling documents. Every
    interval draws the same resamples (same documents and seed), so the differences are paired."""
    orders = {"biencoder": candidates.hits(), "cross_only": candidates.hits(candidates.cross),
              "reranked": candidates.hits(candidates.combined(weight))}
    top1 = {name: hits[:, 0].astype(float) for name, hits in orders.items()}
    documents = candidates.documents
    out: dict[str, float] = {"mentions": float(len(candidates.gold)), "documents": float(len(np.unique(documents))),
                             "retrieval_weight": weight,
                             f"recall_at_{candidates.concepts.shape[1]}": float(orders["biencoder"].any(axis=1).mean())}
    for name, hits in orders.items():
        out |= accuracy_at(hits, documents, name, n_boot, alpha, seed)
    for name in ("reranked", "cross_only"):
        diff = top1[name] - top1["biencoder"]
        interval = bootstrap.bootstrap_clusters(bootstrap.mean_stat(diff), documents, n_boot, alpha, seed)
        out |= {f"{name}_minus_biencoder": interval.estimate, f"{name}_minus_biencoder_ci_low": interval.low,
                f"{name}_minus_biencoder_ci_high": interval.high}
    return out


def accuracy_at(hits: np.ndarray, documents: np.ndarray, name: str, n_boot: int, alpha: float,
                seed: int) -> dict[str, float]:
    """`<name>_acc_at_1` and `_5` of one order (`hits`: (n, k) bool, the gold concept at each rank), each
    with an interval that resamples `documents` (one per row)."""
    out: dict[str, float] = {}
    for k in (1, 5):
        found = hits[:, :k].any(axis=1).astype(float)
        interval = bootstrap.bootstrap_clusters(bootstrap.mean_stat(found), documents, n_boot, alpha, seed)
        out |= {f"{name}_acc_at_{k}": interval.estimate, f"{name}_acc_at_{k}_ci_low": interval.low,
                f"{name}_acc_at_{k}_ci_high": interval.high}
    return out
