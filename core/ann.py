"""The FAISS item index of a serving bundle: which kind fits a catalogue, building and tuning it once (in the
worker, when the bundle is written), measuring its recall@10 against exact search, saving it, and loading it
memory-mapped so that every API process serving a bundle shares one copy through the page cache.

Measured at 1M items x 32 dims on 2 cores (bench/results/serve-scale-1m.json): IVF-flat trains and fills in
seconds, HNSW took ~10 minutes to build, so IVF-flat is the approximate kind chosen by size.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Literal, NamedTuple

import faiss
import numpy as np

logger = logging.getLogger(__name__)

IndexKind = Literal["flat", "ivf", "hnsw"]
IndexChoice = Literal["auto", "flat", "ivf", "hnsw"]
INDEX_KINDS: tuple[IndexKind, ...] = ("flat", "ivf", "hnsw")
INDEX_FILE = "index.faiss"
RECALL_K = 10
# Users whose top-10 the recall is measured on (one exact batched search: ~5 s at 1M items on 2 cores).
RECALL_QUERIES = 500
# Search-breadth ladders tried in order until the target recall is met (nprobe for IVF, efSearch for HNSW).
# Steps of ~1.5x: each query costs about nprobe x n/nlist vector reads, so the smallest breadth that meets
# the target is worth finding (at 1M items, nprobe 24 instead of 32 is ~25 % less work per request).
_NPROBES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
_EF_SEARCH = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
# k-means sample per IVF list (FAISS warns below 39): enough for stable centroids, small enough to train 1M
# items in ~2 s on 2 cores.
_TRAIN_PER_LIST = 64
HNSW_M = 32


class IndexSpec(NamedTuple):
    """What to build: ``choice`` ("auto" picks by size), the exact-search limit and the recall target."""

    choice: IndexChoice = "auto"
    exact_max_items: int = 100_000
    target_recall: float = 0.95


    @classmethod
    def of(cls, settings: Any) -> IndexSpec:
        """The spec the settings ask for (``RECDISTILL_INDEX``, ``_INDEX_EXACT_MAX_ITEMS``, ``_INDEX_TARGET_RECALL``)."""
        return cls(settings.index, settings.index_exact_max_items, settings.index_target_recall)


class IndexInfo(NamedTuple):
    """What was built, stored in the bundle's meta.json under "index"."""

    kind: IndexKind
    params: dict[str, int]
    recall_at_10: float | None  # None for exact search (1.0 by construction)
    recall_queries: int
    build_s: float
    built_on: str = "cpu"  # "gpu": IVF trained and filled by faiss-gpu (the worker image), then saved as CPU

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": self.params, "recall_at_10": self.recall_at_10,
                "recall_queries": self.recall_queries, "build_s": round(self.build_s, 3),
                "built_on": self.built_on, "file": INDEX_FILE}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> IndexInfo:
        return cls(raw["kind"], {str(k): int(v) for k, v in raw["params"].items()}, raw.get("recall_at_10"),
                   int(raw.get("recall_queries", 0)), float(raw.get("build_s", 0.0)), str(raw.get("built_on", "cpu")))


def choose_kind(n_items: int, spec: IndexSpec) -> IndexKind:
    """Exact search up to ``exact_max_items`` items, IVF-flat above; an explicit choice wins."""
    if spec.choice != "auto":
        return spec.choice
    return "flat" if n_items <= spec.exact_max_items else "ivf"


def n_lists(n_items: int) -> int:
    """IVF lists: ~sqrt(n) (1,000 at 1M items, ~1,000 items a list), never fewer than 39 items a list."""
    return max(1, min(int(math.sqrt(n_items)), n_items // 39))


def _gpus() -> int:
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def _new_index(kind: IndexKind, item_emb: np.ndarray, seed: int) -> tuple[faiss.Index, str]:
    """The filled index and where it was built ("gpu" for IVF under faiss-gpu with a GPU, else "cpu": FAISS
    uses every core, the worker sets no OpenMP limit)."""
    dim = item_emb.shape[1]
    emb = np.ascontiguousarray(item_emb, dtype=np.float32)
    if kind == "flat":
        index: faiss.Index = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        nlist = n_lists(len(emb))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(emb), min(len(emb), _TRAIN_PER_LIST * nlist), replace=False))
        if _gpus():
            try:  # k-means and list assignment on the GPU; the saved index is a plain CPU one
                gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
                gpu.train(np.ascontiguousarray(emb[rows]))
                gpu.add(emb)
                return faiss.index_gpu_to_cpu(gpu), "gpu"
            except RuntimeError as exc:  # a GPU that is busy or out of memory: the CPU build still works
                logger.warning("GPU index build failed (%s); building on the CPU", exc)
        index.train(np.ascontiguousarray(emb[rows]))
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = max(2 * HNSW_M, 80)
    else:
        raise ValueError(f"unknown index kind {kind!r}: expected one of {', '.join(INDEX_KINDS)}")
    index.add(emb)
    return index, "cpu"


def set_breadth(index: faiss.Index, kind: IndexKind, params: dict[str, int]) -> None:
    """Apply the tuned search breadth (what the recall was measured with) to a loaded index."""
    if kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = params["nprobe"]
    elif kind == "hnsw":
        index.hnsw.efSearch = params["ef_search"]


def recall_at_k(got: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` (ids, -1 padded) found in the same row of ``got``."""
    hits = [len(set(g[g >= 0].tolist()) & set(t[t >= 0].tolist())) / max(int((t >= 0).sum()), 1)
            for g, t in zip(got, truth, strict=True)]
    return float(np.mean(hits)) if hits else 1.0


def build(item_emb: np.ndarray, queries: np.ndarray, spec: IndexSpec, seed: int = 0) -> tuple[faiss.Index, IndexInfo]:
    """Build the index ``spec`` picks for ``item_emb`` and tune its search breadth: the smallest on the ladder
    whose recall@10 against exact inner-product search, over up to ``RECALL_QUERIES`` of ``queries`` (the
    model's own user embeddings), reaches ``spec.target_recall``; the recall it reached is returned."""
    kind = choose_kind(len(item_emb), spec)
    start = time.perf_counter()
    index, built_on = _new_index(kind, item_emb, seed)
    if kind == "flat":
        return index, IndexInfo("flat", {}, None, 0, time.perf_counter() - start, built_on)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(queries), min(len(queries), RECALL_QUERIES), replace=False))
    q = np.ascontiguousarray(queries[pick], dtype=np.float32)
    k = min(RECALL_K, len(item_emb))
    _, truth = faiss.knn(q, np.ascontiguousarray(item_emb, dtype=np.float32), k, faiss.METRIC_INNER_PRODUCT)
    name, ladder = ("nprobe", _NPROBES) if kind == "ivf" else ("ef_search", _EF_SEARCH)
    if kind == "ivf":
        ladder = tuple(p for p in ladder if p < index.nlist) + (index.nlist,)
    recall = 0.0
    for value in ladder:
        params = {name: value, **({"nlist": index.nlist} if kind == "ivf" else {"m": HNSW_M})}
        set_breadth(index, kind, params)
        _, got = index.search(q, k)
        recall = recall_at_k(got, truth)
        if recall >= spec.target_recall:
            break
    info = IndexInfo(kind, params, round(recall, 4), len(q), time.perf_counter() - start, built_on)
    logger.info("built %s index over %d items: %s, recall@10 %.4f on %d users, %.1f s", kind, len(item_emb),
                params, recall, len(q), info.build_s)
    return index, info


def save(index: faiss.Index, folder: Path) -> None:
    faiss.write_index(index, str(folder / INDEX_FILE))


def load(folder: str | os.PathLike[str], info: IndexInfo) -> faiss.Index:
    """Read the saved index memory-mapped (FAISS 1.15 maps flat codes, IVF lists and the HNSW graph with
    IO_FLAG_MMAP_IFC: measured ~2 MB anonymous memory instead of a private copy), read-only."""
    index = faiss.read_index(str(Path(folder) / INDEX_FILE), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
    set_breadth(index, info.kind, info.params)
    return index
