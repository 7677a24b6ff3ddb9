"""The cross_encoder config: one YAML file per profile (configs/smoke.yaml, configs/full.yaml)."""

import re
from dataclasses import dataclass, field
from typing import Literal, get_args

from medrepro.config_sections import (
    EncoderConfig,
    OutputPaths,
    RuntimeConfig,
    TrainConfig,
    check_not_negative,
    check_positive,
    check_range,
)

SAPBERT = "cambridgeltl/SapBERT-from-PubMedBERT-fulltext"
Storage = Literal["float32", "fp16", "sq8"]


@dataclass
class PathsConfig(OutputPaths):
    prepared: str = "data/cross_encoder/prepared"
    index: str = "data/cross_encoder/index"
    mined: str = "data/cross_encoder/mined"


@dataclass
class DataConfig:
    source: Literal["synthetic", "medmentions"] = "synthetic"
    # The MedMentions release directory holding corpus_pubtator.txt(.gz) (full/data or st21pv/data)...
    medmentions_dir: str = ""
    # ...and the one holding corpus_pubtator_pmids_{trng,dev,test}.txt (full/data; ST21pv uses the same);
    # empty: medmentions_dir.
    split_dir: str = ""
    # The UMLS release directory with MRCONSO.RRF, MRSTY.RRF and optionally MRCUI.RRF (or its META/).
    umls_dir: str = ""
    # Source vocabularies to keep (empty keeps all) and whether suppressed atoms stay.
    sabs: list[str] = field(default_factory=list)
    keep_suppressed: bool = False
    # Index every loaded concept (`all`) or only those the corpus mentions (`corpus`, much smaller).
    concepts: Literal["all", "corpus"] = "all"
    # Optional `sha256sum`-format manifest, relative to medmentions_dir, checked in prepare.
    checksums: str = ""
    synthetic_concepts: int = 400
    synthetic_documents: int = 150
    # Words of the document on each side of a mention that the cross-encoder reads with it (ambiguous
    # names, "RI" the disorder or the procedure, are told apart by them and the semantic types).
    context_words: int = 16

    def __post_init__(self) -> None:
        check_positive({"synthetic_concepts": self.synthetic_concepts,
                        "synthetic_documents": self.synthetic_documents})
        check_not_negative({"context_words": self.context_words})  # 0: the mention alone


@dataclass
class IndexConfig:
    # `flat`: exact inner product; `hnsw` and `ivf` are approximate, for millions of names.
    kind: Literal["flat", "hnsw", "ivf"] = "flat"
    # How `hnsw` and `ivf` store the vectors they search: float32, fp16 (half the memory, the same recall
    # on unit vectors) or sq8 (8 bits per dimension, a quarter; it ranks less exactly, so pair it with
    # `refine`). See `bench`. `flat` always stores float32.
    storage: Storage = "float32"
    # Search `hnsw` or `ivf` in the first `reduce_dim` principal components of the names (PCA fitted on
    # them; 0 searches all dimensions): far cheaper distances where the names lie near a
    # low-dimensional surface, as embeddings do. Pair it with `refine`, which ranks on every dimension.
    reduce_dim: int = 0
    # Re-rank the approximate search's best `refine_factor` × k names by the exact inner product on a
    # second copy of the vectors kept in this precision (`none`: the approximate order is final).
    refine: Literal["none", "fp16", "float32"] = "none"
    refine_factor: int = 2
    hnsw_m: int = 32
    # Candidates kept while linking each name into the graph (faiss' default 40): more builds a graph
    # that finds the same recall with a shorter search.
    hnsw_ef_construction: int = 40
    hnsw_ef_search: int = 128
    ivf_nlist: int = 1024
    ivf_nprobe: int = 32
    # Use a GPU index when faiss has GPU support and a GPU is visible.
    gpu: bool = True
    batch_size: int = 256
    max_length: int = 25

    def __post_init__(self) -> None:
        check_positive({"hnsw_m": self.hnsw_m, "hnsw_ef_construction": self.hnsw_ef_construction,
                        "hnsw_ef_search": self.hnsw_ef_search, "ivf_nlist": self.ivf_nlist,
                        "ivf_nprobe": self.ivf_nprobe, "batch_size": self.batch_size, "max_length": self.max_length,
                        "refine_factor": self.refine_factor})
        check_not_negative({"reduce_dim": self.reduce_dim})
        if self.kind == "flat" and (self.refine != "none" or self.reduce_dim):
            raise ValueError("refine and reduce_dim are for an approximate index; a flat index is exact "
                             "(set refine: none and reduce_dim: 0, or kind: hnsw or ivf)")


@dataclass
class MiningConfig:
    # Candidate concepts kept per mention (recall is reported at 1, 5, 20 and this).
    candidates: int = 64
    # Semantic-hard negatives: among the top `hard_top_k` candidates, those scoring >= threshold.
    hard_top_k: int = 20
    hard_threshold: float = 0.85
    hard_per_positive: int = 5
    # Type negatives: concepts sharing a semantic type with the gold one (`same`, the seed's intent:
    # plausible confusions) or sharing none (`different`: easy negatives).
    type_mode: Literal["same", "different"] = "same"
    type_per_positive: int = 2
    random_per_positive: int = 1

    def __post_init__(self) -> None:
        check_positive({"candidates": self.candidates})
        # Hard negatives come from the retrieved candidates: a deeper top-k would silently stop at them.
        check_range("hard_top_k", self.hard_top_k, 1, self.candidates)
        check_range("hard_threshold", self.hard_threshold, -1.0, 1.0)  # a cosine of unit vectors
        per_positive = {"hard_per_positive": self.hard_per_positive, "type_per_positive": self.type_per_positive,
                        "random_per_positive": self.random_per_positive}
        check_not_negative(per_positive)
        if not any(per_positive.values()):
            raise ValueError("hard_per_positive, type_per_positive and random_per_positive are all 0: training "
                             "needs negatives")


@dataclass
class EvalConfig:
    batch_size: int = 128
    threshold: float = 0.5
    calibration_bins: int = 15
    # Candidates per mention the cross-encoder re-ranks in the linking evaluation and in `link`.
    rerank_top_k: int = 20
    # A mapping is "high confidence" when its calibrated probability reaches this.
    high_confidence: float = 0.9
    # Which fitted scaler the linking figures use: platt, temperature or none (the exported model, and so
    # `link`, always carries Platt).
    calibration: Literal["platt", "temperature", "none"] = "platt"
    bootstrap: int = 1000
    alpha: float = 0.05

    def __post_init__(self) -> None:
        check_positive({"batch_size": self.batch_size, "calibration_bins": self.calibration_bins,
                        "rerank_top_k": self.rerank_top_k, "bootstrap": self.bootstrap})
        check_range("threshold", self.threshold, 0.0, 1.0, open_low=True, open_high=True)
        check_range("high_confidence", self.high_confidence, 0.0, 1.0, open_low=True)
        check_range("alpha", self.alpha, 0.0, 1.0, open_low=True, open_high=True)


@dataclass
class BenchConfig:
    """What `bench` measures beyond the mined data (see bench.py and index_bench.py)."""

    score_pairs: int = 2000
    repeats: int = 3
    # FAISS at UMLS scale: synthetic unit vectors of SapBERT's width, one measurement per size.
    index_sizes: list[int] = field(default_factory=lambda: [100_000, 1_000_000, 4_000_000])
    index_queries: int = 1000
    index_dim: int = 768
    # The synthetic names' intrinsic dimension: it decides how well approximate search does.
    index_latent_dim: int = 32
    # IVF (its best, fp16) and HNSW over the first 64 principal components re-ranked on fp16 vectors of
    # all 768 (the full profile's choice); the README lists the kinds measured before (and
    # `index_config` how to name them: `hnsw_fp16`, `hnsw_sq8_refine`, `ivf_pca128_refine`, ...).
    index_kinds: list[str] = field(default_factory=lambda: ["ivf_fp16", "hnsw_pca64_refine"])
    # The graphs of the hnsw kinds: efConstruction 160 rather than faiss' 40 for the same recall at
    # a shorter search (0.993 against 0.988 at efSearch 256, 1M names).
    hnsw_m: int = 32
    hnsw_ef_construction: int = 160
    hnsw_ef_search: list[int] = field(default_factory=lambda: [128, 192, 256, 384])
    ivf_nprobe: list[int] = field(default_factory=lambda: [128, 256, 512])
    # Re-ranking depth factors measured for the kinds ending in `_refine`.
    refine_factors: list[int] = field(default_factory=lambda: [2])
    # Approximate indexes are built up to this size only: HNSW over 4M names takes about 20 minutes
    # on 2 cores. Exact search is measured at every size.
    approximate_max_names: int = 1_000_000
    # `mine` (with its inputs: synthetic data, prepare, index) at these multiples of the profile's
    # synthetic sizes.
    mine_scales: list[int] = field(default_factory=lambda: [1, 10, 100])

    def __post_init__(self) -> None:
        check_positive({"score_pairs": self.score_pairs, "repeats": self.repeats, "index_sizes": self.index_sizes,
                        "hnsw_m": self.hnsw_m, "hnsw_ef_construction": self.hnsw_ef_construction,
                        "index_queries": self.index_queries, "index_dim": self.index_dim,
                        "hnsw_ef_search": self.hnsw_ef_search, "ivf_nprobe": self.ivf_nprobe,
                        "refine_factors": self.refine_factors, "mine_scales": self.mine_scales})
        check_not_negative({"approximate_max_names": self.approximate_max_names})  # 0: exact search only
        # The names span index_latent_dim orthonormal directions of index_dim.
        check_range("index_latent_dim", self.index_latent_dim, 1, self.index_dim)
        for kind in self.index_kinds:  # index_bench builds each kind as an IndexConfig: a bad name fails here
            if index_config(kind).reduce_dim >= self.index_dim:
                raise ValueError(f"index_kinds: {kind!r} keeps as many principal components as index_dim "
                                 f"{self.index_dim} has dimensions, or more")


def index_config(kind: str) -> IndexConfig:
    """A benchmark kind's IndexConfig: `hnsw` or `ivf`, then optionally `_pcaN` (reduce_dim N), `_` and a
    storage, and `_refine` (re-ranking on fp16 vectors), in that order: `hnsw`, `ivf_fp16`,
    `hnsw_sq8_refine`, `ivf_pca128_refine`."""
    match = re.fullmatch(rf"(hnsw|ivf)(?:_pca(\d+))?(?:_({'|'.join(get_args(Storage))}))?(_refine)?", kind)
    if match is None:
        raise ValueError(f"index_kinds: {kind!r} is not hnsw or ivf, then optionally _pcaN, "
                         f"_{' or _'.join(get_args(Storage))} and _refine, in that order")
    base, reduce_dim, storage, refine = match.groups()
    return IndexConfig(kind=base, reduce_dim=int(reduce_dim or 0), storage=storage or "float32",
                       refine="fp16" if refine else "none")


@dataclass
class CrossEncoderConfig:
    seed: int = 0
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # The bi-encoder that retrieves candidates ([CLS] pooling) and the cross-encoder's starting point.
    biencoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(SAPBERT))
    cross_encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(SAPBERT))
    index: IndexConfig = field(default_factory=IndexConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    max_length: int = 128
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)

    def __post_init__(self) -> None:
        check_positive({"max_length": self.max_length})
        # Linking re-ranks among the candidates mine kept per mention: more would silently be fewer.
        if self.eval.rerank_top_k > self.mining.candidates:
            raise ValueError(f"eval.rerank_top_k {self.eval.rerank_top_k} is more than the mining.candidates "
                             f"{self.mining.candidates} it re-ranks")
