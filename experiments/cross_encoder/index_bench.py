"""FAISS at UMLS scale: build time, memory, search rate and recall of each index kind against exact
search, on synthetic names of SapBERT's width (768) at the sizes of `bench.index_sizes`.

UMLS has about 4 million English names; the smoke index has 1,389. What grows with the names is the
index, so it is measured here on vectors of the real shape rather than on the smoke data.

The synthetic names. Approximate search works because real embeddings are not spread over all 768
dimensions: names lie near a low-dimensional surface. The vectors are drawn that way: each concept is
a point in a `index_latent_dim`-dimensional latent space (Gaussian, with a decaying spectrum, as
embedding spectra decay), its three names scatter around it there, and a fixed orthonormal map lifts
them to 768 dimensions, where isotropic noise (30 % of the norm) is added before normalising. A query
(a mention) is its concept's latent point plus noise of its own. With latent dimension 32 and 100k
names, a query's best name scores 0.85 and its 64th 0.63 on average, and random pairs 0.0 ± 0.23. The
recall figures hold for data shaped like this; the intrinsic dimension of real SapBERT vectors is what
to check first if a real run's candidate recall (mining.json) falls short.

Exact search (`flat`, the reference) runs block by block over the generated names; each approximate
index is built alone from the same blocks (never all names at once), then searched for
`index_queries` queries at depth 64 with every search setting; recall@1 and recall@64 are the share of
exact search's top-1 and top-64 rows that the index also returns. Memory is the size of the index as
faiss writes it (what `index` stores and `mine` loads; for `flat`, names × 768 × 4 bytes).

Both sides run with the profile's runtime (`runtime.threads`, `runtime.cpu_kernels`): exact search's
matrix product (BLAS) and the indexes' searches (OpenMP) get the same threads and kernel level. The
smoke profile pins one thread and AVX2 kernels; `runtime.threads=0 runtime.cpu_kernels=` measures
with every core and the machine's own kernels, as the full profile runs.
"""

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from experiments.cross_encoder.config import BenchConfig, index_config
from experiments.cross_encoder.retrieval import empty_index, searched_index, set_search
from medrepro.benchmark import spread

NAMES_PER_CONCEPT = 3
BLOCK_CONCEPTS = 20_000
DEPTH = 64
ISOTROPIC_NOISE = 0.3
NAME_SPREAD = 0.35
QUERY_SPREAD = 0.3
RECALL_GOAL = 0.99
SPEEDUP_GOAL = 10.0
TRAIN_PER_LIST = 40
# Training sample of the other kinds that train (a scalar quantizer's ranges).
TRAIN_OTHERS = 100_000
# Names kept in memory between the interleaved rounds up to this size (1M names of width 768: 3 GB).
KEEP_NAMES_BYTES = 4 << 30


@dataclass(frozen=True)
class SyntheticNames:
    """A deterministic set of `n` unit name vectors, generated block by block."""

    n: int
    dim: int
    latent_dim: int
    seed: int

    def __post_init__(self) -> None:
        rng = np.random.default_rng([self.seed, 0])
        basis, _ = np.linalg.qr(rng.standard_normal((self.dim, self.latent_dim)))
        spectrum = np.arange(1, self.latent_dim + 1, dtype=np.float32) ** -0.5
        object.__setattr__(self, "lift", (spectrum[:, None] * basis.T).astype(np.float32))

    @property
    def concepts(self) -> int:
        return -(-self.n // NAMES_PER_CONCEPT)

    def _concept_points(self, block: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1, block])
        return rng.standard_normal((BLOCK_CONCEPTS, self.latent_dim), dtype=np.float32)

    def _embed(self, latent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = latent @ self.lift
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        x += ISOTROPIC_NOISE / np.sqrt(self.dim) * rng.standard_normal(x.shape, dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def blocks(self) -> Iterator[np.ndarray]:
        """The name vectors in row order, one block of concepts' names at a time."""
        rows_per_block = BLOCK_CONCEPTS * NAMES_PER_CONCEPT
        for block in range(-(-self.n // rows_per_block)):
            rng = np.random.default_rng([self.seed, 2, block])
            rows = min(rows_per_block, self.n - block * rows_per_block)
            points = np.repeat(self._concept_points(block), NAMES_PER_CONCEPT, axis=0)[:rows]
            yield self._embed(points + NAME_SPREAD * rng.standard_normal(points.shape, dtype=np.float32), rng)

    def queries(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """`count` mentions, each of a random concept: (vectors, concepts); concept c's names are rows
        3c to 3c + 2."""
        rng = np.random.default_rng([self.seed, 3])
        concepts = np.sort(rng.integers(0, self.concepts, count))
        points = np.concatenate([self._concept_points(b)[concepts[concepts // BLOCK_CONCEPTS == b] % BLOCK_CONCEPTS]
                                 for b in np.unique(concepts // BLOCK_CONCEPTS)])
        vectors = self._embed(points + QUERY_SPREAD * rng.standard_normal(points.shape, dtype=np.float32), rng)
        return vectors, concepts


def index_bytes(index: faiss.Index, scratch: Path) -> int:
    faiss.write_index(index, str(scratch))
    size = scratch.stat().st_size
    scratch.unlink()
    return size


def build(names: SyntheticNames, kind: str, ivf_nlist: int, hnsw_m: int,
          hnsw_ef_construction: int = 40) -> tuple[faiss.Index, float]:
    """(index, build seconds without generating the vectors)."""
    cfg = index_config(kind)
    cfg.ivf_nlist, cfg.hnsw_m, cfg.hnsw_ef_construction = ivf_nlist, hnsw_m, hnsw_ef_construction
    index = empty_index(names.dim, names.n, cfg)
    # IVF's k-means wants 39 to 256 names per list: 40 keeps its cost (lists × sample) in bounds.
    nlist = getattr(searched_index(index), "nlist", 0)
    wanted = min(names.n, TRAIN_PER_LIST * nlist) if nlist else min(names.n, TRAIN_OTHERS)
    pending: list[np.ndarray] = []
    seconds = 0.0
    for block in names.blocks():
        pending.append(block)
        if not index.is_trained and sum(map(len, pending)) < wanted:
            continue
        t0 = time.perf_counter()
        if not index.is_trained:
            index.train(np.concatenate(pending)[:wanted])
        for vectors in pending:
            index.add(vectors)
        seconds += time.perf_counter() - t0
        pending = []
    return index, seconds


def search(index: faiss.Index, queries: np.ndarray) -> tuple[np.ndarray, float]:
    """(rows of the top DEPTH names per query, seconds)."""
    t0 = time.perf_counter()
    _, rows = index.search(queries, DEPTH)
    return rows, time.perf_counter() - t0


def exact_search(blocks: Iterable[np.ndarray], queries: np.ndarray) -> tuple[np.ndarray, float]:
    """What `IndexFlatIP.search` computes (one matrix product and a heap per block of names), block
    by block: a flat index of 4M names would hold 12 GB, and growing it to that size needs twice as
    much. (rows, seconds, the generation of the names not counted)."""
    heap = faiss.ResultHeap(len(queries), DEPTH, keep_max=True)
    seconds, offset = 0.0, 0
    for block in blocks:
        t0 = time.perf_counter()
        scores, rows = faiss.knn(queries, block, min(DEPTH, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, np.where(rows >= 0, rows + offset, -1))
        seconds += time.perf_counter() - t0
        offset += len(block)
    heap.finalize()
    return heap.I, seconds


def recall(found: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    at_1 = float((found[:, 0] == exact[:, 0]).mean())
    at_depth = float(np.mean([np.intersect1d(f, e).size / DEPTH for f, e in zip(found, exact, strict=True)]))
    return {"recall_at_1": at_1, f"recall_at_{DEPTH}": at_depth}


@dataclass(frozen=True)
class Setting:
    """One search setting of an index: HNSW's efSearch or IVF's nprobe, and the re-ranking factor."""

    name: str
    value: int
    refine_factor: int = 0

    def apply(self, index: faiss.Index) -> None:
        set_search(index, self.value, self.value, self.refine_factor or 1)


def settings(kind: str, cfg: BenchConfig) -> list[Setting]:
    name, values = ("ef_search", cfg.hnsw_ef_search) if kind.startswith("hnsw") else ("nprobe", cfg.ivf_nprobe)
    factors = cfg.refine_factors if index_config(kind).refine != "none" else [0]
    return [Setting(name, value, factor) for value in values for factor in factors]


def measure_size(n: int, cfg: BenchConfig, seed: int, workdir: Path, log: Callable[[str], None] = print) -> list[dict]:
    """One row per index and search setting at `n` names, exact search first.

    Speed is measured in `cfg.repeats` interleaved rounds per index: exact search, then every setting,
    with the same queries; a setting's speedup in a round is that round's exact seconds over its own,
    so a slow spell of a shared machine falls on both sides. The row gives the median speedup, its
    min and max, and every round's."""
    scratch = workdir / "index.faiss"
    names = SyntheticNames(n, cfg.index_dim, cfg.index_latent_dim, seed)
    queries, _ = names.queries(cfg.index_queries)
    # The names are kept between rounds where they fit, as one array, so that exact search is one
    # matrix product per round (the strongest reference); where not, they are generated again
    # (untimed) and searched block by block.
    kept = [np.concatenate(list(names.blocks()))] if n * names.dim * 4 <= KEEP_NAMES_BYTES else None

    def blocks() -> Iterable[np.ndarray]:
        return kept if kept is not None else names.blocks()

    # One inverted list per ~250 names up to 4√n lists (faiss' rule of thumb for millions).
    nlist = int(2 ** round(np.log2(max(1.0, min(n / 250, 4 * np.sqrt(n))))))
    exact, exact_s = exact_search(blocks(), queries)
    size = n * names.dim * 4  # IndexFlatIP stores the float32 vectors and nothing else
    rows = [{"names": n, "kind": "flat", "setting": "", "value": 0, "refine_factor": 0, "nlist": 0, "hnsw_m": 0,
             "hnsw_ef_construction": 0,
             "build_s": 0.0, "memory_mb": size / 2**20, "queries_per_s": len(queries) / exact_s, "speedup": 1.0,
             "speedup_min": 1.0, "speedup_max": 1.0, "speedup_rounds": [], "recall_at_1": 1.0,
             f"recall_at_{DEPTH}": 1.0}]
    log(f"index bench {n:,} names: exact {len(queries) / exact_s:,.0f} queries/s, {size / 2**20:,.0f} MB")
    if n > cfg.approximate_max_names:
        log(f"index bench {n:,} names: approximate kinds skipped above bench.approximate_max_names")
        return rows
    for kind in cfg.index_kinds:
        t0 = time.perf_counter()
        index, build_s = build(names, kind, nlist, cfg.hnsw_m, cfg.hnsw_ef_construction)
        size = index_bytes(index, scratch)
        chosen = settings(kind, cfg)
        exact_rounds: list[float] = []
        seconds: dict[Setting, list[float]] = {s: [] for s in chosen}
        found: dict[Setting, np.ndarray] = {}
        for _ in range(cfg.repeats):
            exact_rounds.append(exact_search(blocks(), queries)[1])
            for setting in chosen:
                setting.apply(index)
                found[setting], took = search(index, queries)
                seconds[setting].append(took)
        for setting in chosen:
            speedup = spread([e / t for e, t in zip(exact_rounds, seconds[setting], strict=True)])
            rows.append({"names": n, "kind": kind, "setting": setting.name, "value": setting.value,
                         "refine_factor": setting.refine_factor, "nlist": getattr(searched_index(index), "nlist", 0),
                         "hnsw_m": cfg.hnsw_m if kind.startswith("hnsw") else 0,
                         "hnsw_ef_construction": cfg.hnsw_ef_construction if kind.startswith("hnsw") else 0,
                         "build_s": build_s,
                         "memory_mb": size / 2**20, "queries_per_s": len(queries) / float(np.median(seconds[setting])),
                         "speedup": speedup["median"], "speedup_min": speedup["min"], "speedup_max": speedup["max"],
                         "speedup_rounds": speedup["rounds"], **recall(found[setting], exact)})
        del index
        best = max((r for r in rows if r["kind"] == kind), key=lambda r: r[f"recall_at_{DEPTH}"])
        log(f"index bench {n:,} names: {kind} built in {build_s:.0f}s, best recall@{DEPTH} "
            f"{best[f'recall_at_{DEPTH}']:.4f} at {best['speedup']:.1f}× exact (min {best['speedup_min']:.1f}, "
            f"max {best['speedup_max']:.1f}; {time.perf_counter() - t0:.0f}s)")
    return rows


def _at_recall(rows: list[dict]) -> list[dict]:
    """The settings at the largest size with approximate kinds that reach recall@64 ≥ 0.99."""
    approximate = [r for r in rows if r["kind"] != "flat"]
    largest = max((r["names"] for r in approximate), default=0)
    return [r for r in approximate if r["names"] == largest and r[f"recall_at_{DEPTH}"] >= RECALL_GOAL]


def choose(rows: list[dict]) -> dict | None:
    """At the largest size with approximate kinds: of the settings reaching recall@64 ≥ 0.99 at ≥ 10×
    exact search's rate in every round, the one using the least memory, then the fastest; None if none does."""
    good = [r for r in _at_recall(rows) if r["speedup_min"] >= SPEEDUP_GOAL]
    return min(good, key=lambda r: (r["memory_mb"], -r["queries_per_s"]), default=None)


def index_bench(cfg: BenchConfig, seed: int, workdir: Path, log: Callable[[str], None] = print) -> dict:
    """Every size of `cfg.index_sizes`; the rows, and the chosen setting."""
    rows = [row for n in cfg.index_sizes for row in measure_size(n, cfg, seed, workdir, log)]
    fastest = max(_at_recall(rows), key=lambda r: r["speedup_min"], default=None)
    return {"rows": rows, "chosen": choose(rows), "fastest_at_recall": fastest, "depth": DEPTH,
            "queries": cfg.index_queries, "rounds": cfg.repeats, "threads": faiss.omp_get_max_threads(),
            "goals": {f"recall_at_{DEPTH}": RECALL_GOAL, "speedup": SPEEDUP_GOAL}}
