"""`mine`: candidates per mention from the bi-encoder index, then training pairs with hard negatives.

Per mention with a loaded gold concept, the pairs are (mention in its context, concept name with its
semantic types; see pair_text.py) with label 1 for the gold concept and 0 otherwise:

- positive: the gold concept under its name closest to the mention (the name the bi-encoder would
  show the cross-encoder at linking time);
- semantic-hard: candidates among the top `hard_top_k` whose similarity is at least `hard_threshold`,
  most similar first, never the gold concept;
- type: concepts sharing a semantic type with the gold one (`type_mode: same`, the default: the
  plausible confusions a linker makes, e.g. another neoplasm) or sharing none (`different`);
- random: any other concept.

Negatives of a mention are distinct concepts, and none is shown under a name of the gold concept
(compared case-insensitively). UMLS has ambiguous strings ("cold" is a disease and a temperature):
another concept under the gold concept's own name would make the same (mention, name) pair both a
positive and a negative, a contradiction no scorer of the pair can resolve. Such pairs are counted
in mining.json (`left_out_same_name`). The candidate search queries with the mention's own
text, never the gold concept's name (which would leak the answer into the candidates). Random draws
are keyed by (seed, mention index), so a pair file does not depend on batch sizes or the order in
which mentions are processed.
"""

import argparse
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from experiments.cross_encoder.config import CrossEncoderConfig, MiningConfig
from experiments.cross_encoder.layout import CANDIDATES_FILE, MINING_FILE, pairs_file
from experiments.cross_encoder.readers import concept_type_names, read_concepts, read_mentions
from experiments.cross_encoder.records import KINDS, PAIR_SPLITS, Concept, Pair, pair_split
from experiments.cross_encoder.retrieval import BiEncoder, read_index, recall_at
from medrepro import atomic
from medrepro.errors import DataError

RECALL_KS = (1, 5, 20, 64)
_MAX_DRAWS = 50  # rejection-sampling attempts per wanted negative before giving up on it


class TypePools:
    """Concept indices per semantic type, for drawing type negatives by rejection sampling (the
    union of a common type's members would cost O(concepts) per mention)."""

    def __init__(self, concepts: list[Concept]) -> None:
        members: dict[str, list[int]] = {}
        for i, concept in enumerate(concepts):
            for tui in concept.types:
                members.setdefault(tui, []).append(i)
        self.members = {tui: np.array(ids) for tui, ids in members.items()}
        self.types = [set(c.types) for c in concepts]


def draw_negatives(gold: int, hard: list[int], pools: TypePools, n_concepts: int, cfg: MiningConfig,
                   rng: np.random.Generator, named_like_gold: Callable[[int], bool] = lambda c: False,
                   ) -> tuple[list[int], list[int], list[int]]:
    """(hard, type, random) negative concept indices for one mention; all distinct and never `gold`.
    `hard` is the mention's eligible hard candidates, best first (already free of gold's names);
    `named_like_gold(c)` tells whether concept c's preferred name, under which type and random
    negatives are shown, is one of the gold concept's names: such draws are rejected."""
    taken = {gold}
    hard_picked = [c for c in hard if c != gold][: cfg.hard_per_positive]
    taken.update(hard_picked)

    def draw(count: int, sample: Callable[[], int | None], accept: Callable[[int], bool]) -> list[int]:
        picked: list[int] = []
        for _ in range(count * _MAX_DRAWS):
            if len(picked) == count:
                break
            c = sample()
            if c is not None and c not in taken and accept(c) and not named_like_gold(c):
                picked.append(c)
                taken.add(c)
        return picked

    gold_types = sorted(pools.types[gold])
    if cfg.type_mode == "same":
        def sample_type() -> int | None:
            if not gold_types:
                return None
            return int(rng.choice(pools.members[gold_types[rng.integers(len(gold_types))]]))

        type_picked = draw(cfg.type_per_positive, sample_type, lambda c: True)
    else:
        type_picked = draw(cfg.type_per_positive, lambda: int(rng.integers(n_concepts)),
                           lambda c: not (pools.types[c] & pools.types[gold]))
    random_picked = draw(cfg.random_per_positive, lambda: int(rng.integers(n_concepts)), lambda c: True)
    return hard_picked, type_picked, random_picked


def hard_candidates(concepts: np.ndarray, scores: np.ndarray, cfg: MiningConfig) -> list[int]:
    """A mention's candidates eligible as semantic-hard negatives: in the top `hard_top_k`, at or above
    the threshold (the gold concept is removed by `draw_negatives`)."""
    top, top_scores = concepts[: cfg.hard_top_k], scores[: cfg.hard_top_k]
    return [int(c) for c, s in zip(top, top_scores, strict=True) if c >= 0 and s >= cfg.hard_threshold]


def best_names(encoder: BiEncoder, queries: np.ndarray, golds: np.ndarray, concepts: list[Concept]) -> list[str]:
    """For each mention, the name of its gold concept most similar to it under the bi-encoder."""
    wanted = sorted(set(golds.tolist()))
    names = [name for g in wanted for name in concepts[g].names]
    vectors = encoder.encode(names, desc="encoding gold concept names")
    first, offset = {}, 0
    for g in wanted:
        first[g] = offset
        offset += len(concepts[g].names)
    out = []
    for q, g in enumerate(golds):
        rows = vectors[first[g]: first[g] + len(concepts[g].names)]
        out.append(concepts[g].names[int(np.argmax(rows @ queries[q]))])
    return out


def mine(cfg: CrossEncoderConfig, args: argparse.Namespace | None = None) -> dict:
    """Write candidates.npz, pairs_{train,dev,test}.jsonl and mining.json (recall, sample mix)."""
    return mine_timed(cfg)[0]


def mine_timed(cfg: CrossEncoderConfig) -> tuple[dict, dict[str, float]]:
    """`mine`, and the seconds of its phases (encode, search, negatives, write), which go to the
    console and to `bench`, never into the outputs: those must depend on the inputs alone."""
    concepts = read_concepts(cfg.paths.prepared)
    mentions = read_mentions(cfg.paths.prepared)
    position = {c.cui: i for i, c in enumerate(concepts)}
    index = read_index(cfg.paths.index, concepts, cfg.index)
    encoder = BiEncoder.load(cfg.biencoder.path, cfg.index.max_length, cfg.index.batch_size)

    t0 = time.perf_counter()
    queries = encoder.encode([m.text for m in mentions], desc="encoding mentions")
    t1 = time.perf_counter()
    cand, rows, scores = index.candidates(queries, cfg.mining.candidates)
    t2 = time.perf_counter()
    gold = np.array([position.get(m.gold, -1) if m.gold else -1 for m in mentions], dtype=np.int64)
    linkable = np.flatnonzero(gold >= 0)
    if linkable.size == 0:
        raise DataError("no mention resolves to a loaded concept: see prepared/missing.json")
    names = dict(zip(linkable.tolist(), best_names(encoder, queries[linkable], gold[linkable], concepts),
                     strict=True))

    pools = TypePools(concepts)
    types = concept_type_names(cfg.paths.prepared, concepts)
    folded_names = [{name.casefold() for name in c.names} for c in concepts]
    folded_preferred = [c.preferred.casefold() for c in concepts]
    pairs: dict[str, list[Pair]] = {s: [] for s in PAIR_SPLITS}
    left_out: Counter[str] = Counter()
    for i in linkable.tolist():
        m, g = mentions[i], int(gold[i])
        rng = np.random.default_rng([cfg.seed, i])
        retrieved = {int(c): index.names[r] for c, r in zip(cand[i], rows[i], strict=True) if c >= 0}
        gold_names = folded_names[g]
        eligible = hard_candidates(cand[i], scores[i], cfg.mining)
        hard_ok = [c for c in eligible if c == g or retrieved[c].casefold() not in gold_names]
        left_out[pair_split(m)] += len(eligible) - len(hard_ok)
        hard, typed, rand = draw_negatives(g, hard_ok, pools, len(concepts), cfg.mining, rng,
                                           lambda c, names=gold_names: folded_preferred[c] in names)
        shown = [(g, names[i], 1, "positive"), *((c, retrieved[c], 0, "hard") for c in hard),
                 *((c, concepts[c].preferred, 0, "type") for c in typed),
                 *((c, concepts[c].preferred, 0, "random") for c in rand)]
        pairs[pair_split(m)].extend(Pair(i, m.text, name, concepts[c].cui, label, kind, m.left, m.right, types[c])
                                    for c, name, label, kind in shown)
    t3 = time.perf_counter()

    out = Path(cfg.paths.mined)
    split_of = np.array([pair_split(m) for m in mentions])
    report: dict = {"recall": {}, "mix": {}, "pairs": {}}
    for split in PAIR_SPLITS:
        if not (split_of[linkable] == split).any():
            # Each split has a job (train, pick the checkpoint, calibrate, test): none may be empty.
            raise DataError(f"no linkable mention in the {split} pairs (see prepared/summary.json; dev documents are "
                            "halved into dev and calibration): the corpus is too small, add documents")
        chosen = linkable[split_of[linkable] == split]
        report["recall"][split] = recall_at(gold[chosen], cand[chosen], (*RECALL_KS[:-1], cfg.mining.candidates))
        kinds = Counter(p.kind for p in pairs[split])
        total = max(1, sum(kinds.values()))
        report["mix"][split] = {k: round(kinds[k] / total, 4) for k in KINDS}
        report["pairs"][split] = {k: kinds[k] for k in KINDS}
    report["mentions"] = {"all": len(mentions), "linkable": int(linkable.size)}
    # Hard candidates shown under one of the gold concept's names: left out, never labelled negative.
    report["left_out_same_name"] = {split: left_out[split] for split in PAIR_SPLITS}
    report["settings"] = asdict(cfg.mining)
    # The whole directory is replaced at once: a killed mine never leaves new pairs beside old ones.
    with atomic.atomic_dir(out) as tmp:
        _save_npz(tmp / CANDIDATES_FILE, cand, rows, scores, gold)
        for split in PAIR_SPLITS:
            atomic.write_text(tmp / pairs_file(split), "".join(json.dumps(asdict(p)) + "\n" for p in pairs[split]))
        atomic.write_json(tmp / MINING_FILE, report)
    t4 = time.perf_counter()
    print(json.dumps({"recall": report["recall"], "mix": report["mix"]["train"], "pairs": report["pairs"]}))
    n = len(mentions)
    print(f"mentions/s: encode {n / max(t1 - t0, 1e-9):.0f}, search {n / max(t2 - t1, 1e-9):.0f}, "
          f"select negatives {linkable.size / max(t3 - t2, 1e-9):.0f}")
    return report, {"encode": t1 - t0, "search": t2 - t1, "negatives": t3 - t2, "write": t4 - t3}


def _save_npz(path: Path, cand: np.ndarray, rows: np.ndarray, scores: np.ndarray, gold: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.savez(f, concepts=cand, rows=rows, scores=scores, gold=gold)
