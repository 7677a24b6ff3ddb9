"""The bi-encoder and its FAISS index: concept names in, candidate concepts per mention out.

Names and mentions are encoded by the same BERT (SapBERT in the full profile), pooled by the [CLS]
token, as SapBERT was trained, and L2-normalised, so inner product is cosine similarity. The index
holds one vector per concept name; a mention's candidates are the concepts of its nearest names,
each concept once, scored by its best name.
"""

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
from torch import nn
from tqdm import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from experiments.cross_encoder.config import CrossEncoderConfig, IndexConfig
from experiments.cross_encoder.layout import INDEX_FILE, META_FILE, NAMES_FILE
from experiments.cross_encoder.readers import read_concepts, read_names
from experiments.cross_encoder.records import Concept
from medrepro import atomic
from medrepro.device import default_device
from medrepro.errors import ConfigError, DataError


class BiEncoder:
    """A BERT encoding texts into their [CLS] vectors, unit length unless `unit` is false (upstream
    SapBERT's evaluation ranks by the raw inner product; see published.py)."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, max_length: int, batch_size: int,
                 unit: bool = True) -> None:
        self.model = model.to(default_device()).eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.unit = unit

    @classmethod
    def load(cls, path: str, max_length: int, batch_size: int) -> "BiEncoder":
        """The encoder at `path` (a hub id or a local directory), as the pipeline's stages use it."""
        # SapBERT's pooler was never trained for its objective; [CLS] is read before it, so skip it.
        model = AutoModel.from_pretrained(path, add_pooling_layer=False)
        return cls(model, AutoTokenizer.from_pretrained(path), max_length, batch_size)

    @torch.inference_mode()
    def encode(self, texts: list[str], desc: str | None = None) -> np.ndarray:
        """(len(texts), hidden) float32, unit rows (unless not `unit`). Texts are batched by length, so
        that a batch holds little padding; the rows come back in the input order."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.model.config.hidden_size), dtype=np.float32)
        starts = range(0, len(texts), self.batch_size)
        for start in tqdm(starts, desc=desc, disable=desc is None, unit="batch", mininterval=5):
            rows = order[start:start + self.batch_size]
            batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.model.device)
            cls = self.model(**batch).last_hidden_state[:, 0].float()
            out[rows] = (torch.nn.functional.normalize(cls, dim=-1) if self.unit else cls).cpu().numpy()
        return out


def build_index(vectors: np.ndarray, cfg: IndexConfig) -> faiss.Index:
    """An inner-product index over unit vectors: exact (`flat`) or approximate (`hnsw`, `ivf`), the
    approximate ones storing float32, fp16 or 8-bit vectors, optionally re-ranked on a second copy."""
    n, dim = vectors.shape
    index = empty_index(dim, n, cfg)
    if not index.is_trained:
        index.train(vectors)
    index.add(vectors)
    return index


def factory_string(n: int, cfg: IndexConfig) -> str:
    """The index as faiss' `index_factory` spells it, e.g. `PCA128,IVF4096,Flat,Refine(SQfp16)`."""
    if cfg.kind == "flat":
        return "Flat"
    reduce = f"PCA{cfg.reduce_dim}," if cfg.reduce_dim else ""
    codes = {"float32": "Flat", "fp16": "SQfp16", "sq8": "SQ8"}[cfg.storage]
    # k-means needs about 39 training points per list; fewer names get fewer lists, not an error.
    coarse = f"HNSW{cfg.hnsw_m}" if cfg.kind == "hnsw" else f"IVF{max(1, min(cfg.ivf_nlist, n // 39))}"
    refine = {"none": "", "fp16": ",Refine(SQfp16)", "float32": ",RFlat"}[cfg.refine]
    return f"{reduce}{coarse},{codes}{refine}"


def empty_index(dim: int, n: int, cfg: IndexConfig) -> faiss.Index:
    """The untrained index `build_index` fills, sized for `n` vectors (IVF's list count depends on it)."""
    if cfg.reduce_dim >= dim:
        raise ConfigError(f"index.reduce_dim {cfg.reduce_dim} is not below the encoder's width {dim}: lower it, "
                          "or set 0 to search every dimension")
    index = faiss.index_factory(dim, factory_string(n, cfg), faiss.METRIC_INNER_PRODUCT)
    if cfg.kind == "ivf":
        searched_index(index).cp.seed = 1234
    if cfg.kind == "hnsw":
        searched_index(index).hnsw.efConstruction = cfg.hnsw_ef_construction
    return index


def variance_kept(index: faiss.Index) -> float | None:
    """The share of the names' variance in the principal components a `reduce_dim` index searches
    (None without them): low, and the search misses neighbours that the re-ranking cannot bring back."""
    if isinstance(index, faiss.IndexRefine):
        index = faiss.downcast_index(index.base_index)
    if not isinstance(index, faiss.IndexPreTransform):
        return None
    pca = faiss.downcast_VectorTransform(index.chain.at(0))
    eigenvalues = faiss.vector_to_array(pca.eigenvalues)
    return float(eigenvalues[:pca.d_out].sum() / eigenvalues.sum())


def searched_index(index: faiss.Index) -> faiss.Index:
    """The approximate index inside the re-ranking and projecting wrappers (the index itself when
    there are none)."""
    if isinstance(index, faiss.IndexRefine):
        index = faiss.downcast_index(index.base_index)
    if isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return index


def set_search(index: faiss.Index, ef_search: int, nprobe: int, refine_factor: int) -> None:
    """HNSW's candidate list, IVF's lists searched (nprobe 1, faiss' default, would search one list in
    1024) and the re-ranking depth factor, where the index has them."""
    if isinstance(index, faiss.IndexRefine):
        index.k_factor = float(refine_factor)
    inner = searched_index(index)
    if isinstance(inner, faiss.IndexIVF):
        inner.nprobe = min(nprobe, inner.nlist)
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = ef_search


def configure_search(index: faiss.Index, cfg: IndexConfig) -> faiss.Index:
    """Set the search-time knobs and move the index to a GPU when asked and possible (HNSW, and the
    re-ranking wrapper, have no GPU version)."""
    set_search(index, cfg.hnsw_ef_search, cfg.ivf_nprobe, cfg.refine_factor)
    if (cfg.gpu and cfg.kind != "hnsw" and cfg.refine == "none" and not cfg.reduce_dim
            and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0):
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    return index


def index_device(index: faiss.Index) -> str:
    """Where the index searches, for the log: `GPU`, or `CPU` with its kernel level (the runtime's
    `cpu_kernels` pins it) and why not GPU."""
    if type(index).__name__.startswith("Gpu"):
        return "GPU"
    cpu = f"CPU with {faiss.SIMDConfig.get_level_name()} kernels"
    if not hasattr(faiss, "StandardGpuResources"):
        return f"{cpu} (this faiss has no GPU support)"
    return f"{cpu} (no GPU visible)" if faiss.get_num_gpus() == 0 else cpu


@dataclass
class NameIndex:
    """The FAISS index and, per row, the concept (an index into `concepts`) and the name it holds."""

    index: faiss.Index
    concept_of_row: np.ndarray
    names: list[str]
    concepts: list[Concept]

    def candidates(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-k distinct concepts per query: (concept indices, name rows, scores), each (n, k),
        padded with -1 (scores with -inf) when fewer than k concepts are found."""
        return self.distinct(*self.search(queries, k), k)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The nearest name rows per query, (scores, rows), deep enough to hold k distinct concepts."""
        names_per_concept = len(self.names) / max(1, len(self.concepts))
        depth = min(self.index.ntotal, int(np.ceil(k * names_per_concept * 2)) + 8)
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), depth)

    def distinct(self, scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`candidates` from the rows `search` found."""
        owners = np.where(rows >= 0, self.concept_of_row[np.maximum(rows, 0)], -1)
        keep = first_distinct(owners, k)
        found = keep >= 0
        at = np.maximum(keep, 0)
        out_concepts = np.where(found, np.take_along_axis(owners, at, axis=1), -1)
        out_rows = np.where(found, np.take_along_axis(rows, at, axis=1), -1)
        out_scores = np.where(found, np.take_along_axis(scores, at, axis=1), -np.inf).astype(np.float32)
        return out_concepts, out_rows, out_scores


def first_distinct(values: np.ndarray, k: int) -> np.ndarray:
    """Per row, the column positions of the first occurrence of each distinct non-negative value, in
    column order, the first k of them, padded with -1. Vectorised: one sort per call, not per row."""
    depth = values.shape[1]
    columns = np.broadcast_to(np.arange(depth), values.shape)
    order = np.lexsort((columns, values), axis=-1)  # by value, then by column
    by_value = np.take_along_axis(values, order, axis=1)
    first = np.ones_like(by_value, dtype=bool)
    first[:, 1:] = by_value[:, 1:] != by_value[:, :-1]
    positions = np.where(first & (by_value >= 0), np.take_along_axis(columns, order, axis=1), depth)
    positions = np.sort(positions, axis=1)[:, :k]
    if positions.shape[1] < k:
        positions = np.pad(positions, ((0, 0), (0, k - positions.shape[1])), constant_values=depth)
    return np.where(positions < depth, positions, -1)


def name_rows(concepts: list[Concept]) -> tuple[list[str], np.ndarray]:
    """Every name of every concept, and the concept index of each."""
    names = [name for concept in concepts for name in concept.names]
    owners = np.repeat(np.arange(len(concepts)), [len(c.names) for c in concepts])
    return names, owners


def write_index(directory: str | Path, concepts: list[Concept], encoder: BiEncoder, cfg: IndexConfig,
                encoder_path: str) -> dict:
    names, owners = name_rows(concepts)
    t0 = time.perf_counter()
    vectors = encoder.encode(names, desc="encoding concept names")
    t1 = time.perf_counter()
    index = build_index(vectors, cfg)
    t2 = time.perf_counter()
    meta = {"kind": cfg.kind, "storage": "float32" if cfg.kind == "flat" else cfg.storage, "encoder": encoder_path,
            "pooling": "cls", "dim": int(vectors.shape[1]),
            "names": len(names), "concepts": len(concepts)}
    if cfg.refine != "none" or cfg.reduce_dim:
        meta |= {"reduce_dim": cfg.reduce_dim, "refine": cfg.refine, "factory": factory_string(len(names), cfg)}
    if cfg.reduce_dim:
        meta["variance_kept"] = variance_kept(index)
        print(f"the first {cfg.reduce_dim} principal components hold {meta['variance_kept']:.1%} of the names' "
              "variance; if mining.json's candidate recall falls short, raise index.reduce_dim (0: all)")
    if isinstance(searched_index(index), faiss.IndexIVF):
        meta["nlist"] = int(searched_index(index).nlist)
    with atomic.atomic_dir(directory) as tmp:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        (tmp / NAMES_FILE).write_text("".join(json.dumps({"cui": concepts[o].cui, "name": n}) + "\n"
                                              for n, o in zip(names, owners, strict=True)))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    # Timings are printed, not stored: the index directory must depend on its inputs alone.
    print(f"encoded {len(names)} names in {t1 - t0:.1f}s, built the {cfg.kind} index in {t2 - t1:.1f}s "
          f"(faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads)")
    return meta


def read_index(directory: str | Path, concepts: list[Concept], cfg: IndexConfig) -> NameIndex:
    directory = Path(directory)
    if not (directory / INDEX_FILE).is_file():
        raise DataError(f"{directory / INDEX_FILE} is missing: run `medrepro cross_encoder index` first")
    position = {c.cui: i for i, c in enumerate(concepts)}
    rows = read_names(directory)
    unknown = [r["cui"] for r in rows if r["cui"] not in position]
    if unknown:
        raise DataError(f"{directory / NAMES_FILE} names {len(unknown)} concepts missing from concepts.jsonl "
                        f"(first {unknown[0]}): the index is stale; re-run `medrepro cross_encoder index`")
    index = faiss.read_index(str(directory / INDEX_FILE))
    if index.ntotal != len(rows):
        raise DataError(f"{directory / INDEX_FILE} holds {index.ntotal} vectors but {NAMES_FILE} {len(rows)} names; "
                        "re-run `medrepro cross_encoder index`")
    owners = np.array([position[r["cui"]] for r in rows], dtype=np.int64)
    index = configure_search(index, cfg)
    print(f"searching the {type(index).__name__} of {index.ntotal} names on {index_device(index)}")
    return NameIndex(index, owners, [r["name"] for r in rows], concepts)


def recall_at(gold: np.ndarray, candidates: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """Share of queries whose gold concept index is among the first k candidates, for each k."""
    hits = candidates == gold[:, None]
    return {f"recall_at_{k}": float(hits[:, :k].any(axis=1).mean()) for k in ks if k <= candidates.shape[1]}


def index_concepts(cfg: CrossEncoderConfig, args: argparse.Namespace | None = None) -> dict:
    """`index`: encode every concept name of prepared/concepts.jsonl into the FAISS index directory."""
    concepts = read_concepts(cfg.paths.prepared)
    encoder = BiEncoder.load(cfg.biencoder.path, cfg.index.max_length, cfg.index.batch_size)
    meta = write_index(cfg.paths.index, concepts, encoder, cfg.index, cfg.biencoder.path)
    print(json.dumps(meta))
    return meta
