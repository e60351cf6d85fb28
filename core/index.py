"""Serving from a bundle: load it (memory-mapped, ``core.bundle``), search top-K with seen/excluded items
filtered inside FAISS, popular fallback, new-user fold-in, similar items.

No torch here: the API process loads bundles written by the worker (numpy/JSON/FAISS files only).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np
import scipy.sparse as sp

from core import ann
from core.ann import IndexKind, IndexSpec
from core.bundle import BUNDLE_VERSION as BUNDLE_VERSION
from core.bundle import BuiltIndex, BundleError, BundleParts, index_for, read_v1, read_v2
from core.bundle import _comma_id_widths as _comma_id_widths  # re-exported for api.query's tests
from core.bundle import _seen_byte_masks as _seen_byte_masks
from core.bundle import build_index as build_index  # re-exported for core.jobs.steps
from core.bundle import read_index_info as read_index_info
from core.bundle import write_bundle as write_bundle

logger = logging.getLogger(__name__)

_NO_CODES = np.zeros(0, dtype=np.int64)
# Ridge of the new-user fold-in (``ServingBundle.recommend_items``), in units of the catalogue's mean squared
# item-embedding norm, so that one value fits models whatever their embedding scale (scaling every
# embedding by c scales V^T V by c^2; a ridge scaled alike leaves the ranking unchanged). Chosen on held-out
# users' validation items of ML-100K (bench/foldin_quality.py, bench/results/foldin-ml-100k.json), never
# on their test items.
FOLDIN_RIDGE = 100.0


class UnknownIdError(LookupError):
    """An id the bundle does not know; ``kind`` is "user" or "item"."""

    def __init__(self, kind: str, value: str) -> None:
        super().__init__(f"unknown {kind} id {value!r}")
        self.kind = kind
        self.value = value


class Recommendation(NamedTuple):
    """Top-K answer: raw item ids, their scores (best first) and where they came from."""

    items: list[str]
    scores: list[float]
    source: str  # "personalized" | "popular" | "similar" | "folded_in"


def _clear_bits(bits: np.ndarray, codes: np.ndarray) -> None:
    """Clear the bits of ``codes`` (any order, duplicates allowed) in a little-endian bitmap."""
    if len(codes) == 0:
        return
    codes = np.sort(codes.astype(np.int64))
    byte = codes >> 3
    mask = np.left_shift(1, codes & 7).astype(np.uint8)
    change = np.empty(len(byte), dtype=bool)
    change[0] = True
    np.not_equal(byte[1:], byte[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    bits[byte[starts]] &= ~np.bitwise_or.reduceat(mask, starts)


class ServingBundle:
    """A loaded bundle: FAISS inner-product index over item embeddings, id maps, seen items, popularity.

    Built from arrays (``index`` picks the FAISS index, ``built`` passes one already built) or loaded from a
    written bundle with ``load``, where every array and the index are memory-mapped.
    """

    def __init__(
        self,
        user_emb: np.ndarray,
        item_emb: np.ndarray,
        user_ids: Sequence[str],
        item_ids: Sequence[str],
        seen: sp.spmatrix | sp.sparray,
        popularity: np.ndarray,
        model_id: str,
        index: IndexSpec | IndexKind = "flat",
        built: BuiltIndex | None = None,
    ) -> None:
        parts = BundleParts.derive(user_emb, item_emb, user_ids, item_ids, seen, popularity)
        self._assemble(parts, model_id, index_for(parts, index, built))

    def _assemble(self, parts: BundleParts, model_id: str, built: BuiltIndex) -> None:
        a = parts.arrays
        self.user_emb, self.item_emb, self._item_unit = a["user_emb"], a["item_emb"], a["item_unit"]
        self.popularity, self._popular_order, self._pop_counts = a["popularity"], a["popular_order"], a["pop_counts"]
        self._seen_indptr, self._seen_indices = a["seen_indptr"], a["seen_indices"]
        self._seen_ptr, self._seen_bytes, self._seen_inv_masks = a["seen_ptr"], a["seen_bytes"], a["seen_masks"]
        self.user_ids = self.user_index = parts.users  # an IdMap: ids[code], .get(id), `id in`
        self.item_ids = self.item_index = parts.items
        self.comma_id_widths = parts.comma_widths
        self.mean_sq_norm = parts.mean_sq_norm
        self.model_id = model_id
        self.index, self.index_info = built
        self.kind: IndexKind = built.info.kind
        self._scratch = threading.local()

    @property
    def n_items(self) -> int:
        return int(self.item_emb.shape[0])

    @property
    def n_users(self) -> int:
        return int(self.user_emb.shape[0])

    @property
    def dim(self) -> int:
        return int(self.item_emb.shape[1])

    @property
    def seen(self) -> sp.csr_matrix:
        """All seen items as a users x items CSR matrix (a copy: for tools and tests, not the request path)."""
        indices = np.asarray(self._seen_indices)
        return sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, np.asarray(self._seen_indptr)),
                             shape=(self.n_users, self.n_items))

    def seen_codes(self, user: int) -> np.ndarray:
        """The item codes ``user`` (a code) has seen, ascending."""
        return np.sort(self._seen_indices[self._seen_indptr[user] : self._seen_indptr[user + 1]])

    def set_breadth(self, value: int) -> None:
        """Approximate indexes only: the search breadth (IVF nprobe, HNSW efSearch); higher is better recall,
        slower. The bundle's recall@10 was measured at the breadth it was built with."""
        name = {"ivf": "nprobe", "hnsw": "ef_search"}.get(self.kind)
        if name is None:
            raise BundleError(f"search breadth applies to approximate indexes, not {self.kind}")
        params = {**self.index_info.params, name: int(value)}
        self.index_info = self.index_info._replace(params=params)
        ann.set_breadth(self.index, self.kind, params)

    @classmethod
    def load(cls, dir: str | os.PathLike[str], index: IndexSpec = IndexSpec()) -> ServingBundle:
        """Load a bundle written by ``write_bundle``, memory-mapped; raises ``BundleError`` naming what is wrong.

        ``index`` only matters for a version 1 bundle, which holds no index: one is built here (what every
        load did before version 2; a large catalogue then takes a while: re-export the model to avoid it)."""
        path = Path(dir)
        meta, parts, built = read_v2(path)
        if parts is None:  # version 1
            start = time.perf_counter()
            bundle = cls(**read_v1(path), model_id=str(meta["model_id"]), index=index)
            logger.warning("serving bundle %s is version 1 (no saved index): built a %s index over %d items at "
                           "load in %.1f s, in this process only; re-export the model for a memory-mapped bundle",
                           path, bundle.kind, bundle.n_items, time.perf_counter() - start)
            return bundle
        bundle = cls.__new__(cls)
        bundle._assemble(parts, str(meta["model_id"]), built)
        logger.info("loaded %s bundle of model %s: %d users x %d items, dim %d (memory-mapped)",
                    bundle.kind, bundle.model_id, bundle.n_users, bundle.n_items, bundle.dim)
        return bundle

    # ----------------------------------------------------------------------------------------- recommend
    def _exclude_codes(self, exclude: Iterable[str]) -> np.ndarray:
        codes = self.item_index.codes([str(i) for i in exclude])
        return codes[codes >= 0]

    def _popular(self, k: int, offset: int, excluded: np.ndarray) -> Recommendation:
        order = self._popular_order
        if len(excluded):
            order = order[~np.isin(order, excluded)]
        codes = order[offset : offset + k]
        return Recommendation(self.item_ids.take(codes), self._pop_counts[codes].tolist(), "popular")

    def _result(self, labels: np.ndarray, scores: np.ndarray, k: int, offset: int) -> Recommendation:
        if len(labels) and labels[-1] < 0:  # FAISS pads missing hits with -1 at the end
            keep = labels >= 0
            labels, scores = labels[keep], scores[keep]
        labels, scores = labels[offset : offset + k], scores[offset : offset + k]
        return Recommendation(self.item_ids.take(labels), scores.astype(np.float64).tolist(), "personalized")

    def recommend(
        self,
        user_id: str,
        k: int,
        offset: int = 0,
        exclude_seen: bool = True,
        exclude: Iterable[str] = (),
        fallback: bool = True,
    ) -> Recommendation:
        """Top ``k`` items after skipping ``offset``; unknown users get popular items unless ``fallback`` is False.

        Seen and excluded items are filtered inside FAISS by a bitmap selector, so the search asks for
        exactly ``k + offset`` hits however many items the user has seen.
        """
        code = self.user_index.get(user_id)
        if code is None and not fallback:
            raise UnknownIdError("user", user_id)
        excluded = self._request_exclusions(k, offset, exclude)
        if code is None:
            return self._popular(k, offset, excluded)
        return self._search_user(code, k, offset, exclude_seen, excluded)

    def recommend_batch(
        self,
        user_ids: Sequence[str],
        k: int,
        offset: int = 0,
        exclude_seen: bool = True,
        exclude: Iterable[str] = (),
        fallback: bool = True,
    ) -> list[Recommendation]:
        """``recommend`` for many users; exclusions and the popular fallback are prepared once.

        One filtered FAISS search per user: a selector applies to a whole search call, so one call for all
        users would have to go k + (most items any of them has seen) deep and filter afterwards, which
        measured 2.5x slower per user on an ML-1M-sized bundle.
        """
        codes = [None if c < 0 else int(c) for c in self.user_index.codes([str(u) for u in user_ids])]
        if not fallback:
            for user_id, code in zip(user_ids, codes, strict=True):
                if code is None:
                    raise UnknownIdError("user", user_id)
        excluded = self._request_exclusions(k, offset, exclude)
        popular = self._popular(k, offset, excluded) if None in codes else None
        return [popular if code is None else self._search_user(code, k, offset, exclude_seen, excluded)  # type: ignore[misc]
                for code in codes]

    def _request_exclusions(self, k: int, offset: int, exclude: Iterable[str]) -> np.ndarray:
        """Validate ``k``/``offset`` and map the excluded item ids to codes (shared by single and batch)."""
        if k <= 0 or offset < 0:
            raise ValueError(f"k must be > 0 and offset >= 0 (got k={k}, offset={offset})")
        return self._exclude_codes(exclude) if exclude else _NO_CODES

    def _search_user(self, code: int, k: int, offset: int, exclude_seen: bool, excluded: np.ndarray) -> Recommendation:
        query = self.user_emb[code : code + 1]  # [1, d]
        return self._search(query, k, offset, code if exclude_seen else None, excluded)

    def _search(self, query: np.ndarray, k: int, offset: int, user: int | None, excluded: np.ndarray) -> Recommendation:
        """Top ``k + offset`` of ``query`` among the items not seen by ``user`` (a code, or None) nor excluded.

        An approximate index looks at part of the catalogue, and filters may leave it fewer hits than asked
        for; then the search runs again exactly (every IVF list; numpy for HNSW), so a user who has seen most
        of the probed items still gets a full page."""
        depth = min(k + offset, self.n_items)
        filtered = user is not None or len(excluded) > 0
        params = self._filter(user, excluded, depth) if filtered else self._plain(depth)
        scores, labels = self.index.search(query, depth, params=params)
        if labels[0, -1] < 0 and self.kind == "ivf":
            params.nprobe = self.index_info.params["nlist"]  # every list: exact
            scores, labels = self.index.search(query, depth, params=params)
        elif labels[0, -1] < 0 and self.kind == "hnsw":
            scores, labels = self._exact(query, depth, filtered)
        return self._result(labels[0], scores[0], k, offset)

    def _exact(self, query: np.ndarray, depth: int, filtered: bool) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``depth`` over the allowed items in numpy: HNSW's fallback, since a graph walk through a
        mostly blocked catalogue may not reach enough allowed items however wide its beam."""
        scores = (self.item_emb @ query[0]).astype(np.float32)  # [n_items]
        if filtered:
            allowed = np.unpackbits(self._scratch.bits, bitorder="little")[: self.n_items].astype(bool)
            scores[~allowed] = -np.inf
        top = np.argpartition(-scores, depth - 1)[:depth] if depth < self.n_items else np.arange(self.n_items)
        top = top[np.lexsort((top, -scores[top]))]
        top = top[np.isfinite(scores[top])]
        return scores[top][None, :], top[None, :].astype(np.int64)

    def _params(self) -> faiss.SearchParameters:
        """This thread's reusable search parameters over its own scratch bitmap (see ``_filter``)."""
        scratch = self._scratch
        if not hasattr(scratch, "params"):
            scratch.bits = np.zeros((self.n_items + 7) // 8, dtype=np.uint8)
            scratch.selector = faiss.IDSelectorBitmap(len(scratch.bits), faiss.swig_ptr(scratch.bits))
            if self.kind == "ivf":
                scratch.params = faiss.SearchParametersIVF(sel=scratch.selector)
                scratch.plain = faiss.SearchParametersIVF()
            elif self.kind == "hnsw":
                scratch.params = faiss.SearchParametersHNSW(sel=scratch.selector)
                scratch.plain = faiss.SearchParametersHNSW()
            else:
                scratch.params = faiss.SearchParameters(sel=scratch.selector)
                scratch.plain = None
        return scratch.params

    def _breadth(self, params: faiss.SearchParameters | None, depth: int) -> None:
        """The tuned breadth (what recall@10 was measured at), or wider when more than 10 hits are asked for."""
        if self.kind == "ivf":
            params.nprobe = self.index_info.params["nprobe"]
        elif self.kind == "hnsw":
            params.efSearch = max(self.index_info.params["ef_search"], depth)

    def _plain(self, depth: int) -> faiss.SearchParameters | None:
        self._params()
        plain = self._scratch.plain
        if plain is not None:
            self._breadth(plain, depth)
        return plain

    def _filter(self, user: int | None, excluded: np.ndarray, depth: int) -> faiss.SearchParameters:
        """This thread's reusable search parameters, its bitmap set to the items the user may get.

        Building FAISS selector objects costs more than the search itself, so each thread builds them
        once over its own scratch bitmap; a search runs to completion before the thread reuses it.
        """
        params = self._params()
        # The allowed-items bitmap is built per request from the user's CSR row: O(items/8 + seen) time and
        # no users x items table in memory.
        bits = self._scratch.bits
        bits.fill(0xFF)
        if user is not None:
            lo, hi = self._seen_ptr[user], self._seen_ptr[user + 1]
            bits[self._seen_bytes[lo:hi]] &= self._seen_inv_masks[lo:hi]
        if len(excluded):
            _clear_bits(bits, excluded)
        self._breadth(params, depth)
        return params

    # ------------------------------------------------------------------------------------------ fold-in
    def fold_in(self, item_codes: np.ndarray, lam: float) -> np.ndarray:
        """The user vector a new user with interactions ``item_codes`` would get, without retraining:
        ``argmin_u sum_i (1 - u.v_i)^2 + lam * |u|^2 = (V^T V + lam I)^-1 V^T 1`` over the rows ``V`` of
        those items' embeddings. One dim x dim solve (float64 for a stable Gram matrix)."""
        if not lam > 0:
            raise ValueError(f"lam must be > 0 (got {lam})")  # > 0 keeps the system solvable
        v = self.item_emb[item_codes].astype(np.float64)  # [n, d]
        gram = v.T @ v
        gram[np.diag_indices_from(gram)] += lam
        return np.linalg.solve(gram, v.sum(axis=0)).astype(np.float32)

    def recommend_items(
        self,
        item_ids: Iterable[str],
        k: int,
        offset: int = 0,
        exclude: Iterable[str] = (),
        fallback: bool = True,
        ridge: float = FOLDIN_RIDGE,
    ) -> Recommendation:
        """Top ``k`` for a user the model has never seen, from the items they interacted with (``fold_in`` with
        ``lam = ridge * mean squared item-embedding norm``); those items and ``exclude`` are left out. Unknown
        item ids are ignored; when none is known the answer is popular items, or ``UnknownIdError("item", ...)``
        when ``fallback`` is False."""
        excluded = self._request_exclusions(k, offset, exclude)
        given = list(dict.fromkeys(item_ids))  # a repeated item is one interaction, not extra weight
        codes = self._exclude_codes(given)
        if len(excluded):
            excluded = np.concatenate([excluded, codes])
        else:
            excluded = codes
        if len(codes) == 0:
            if not fallback:
                raise UnknownIdError("item", given[0] if given else "")
            return self._popular(k, offset, excluded)
        query = self.fold_in(codes, ridge * self.mean_sq_norm)[None, :]
        return self._search(query, k, offset, None, excluded)._replace(source="folded_in")

    def similar(self, item_id: str, k: int) -> Recommendation:
        """The ``k`` items with the highest cosine similarity to ``item_id`` (the item itself excluded)."""
        if k <= 0:
            raise ValueError(f"k must be > 0 (got {k})")
        code = self.item_index.get(item_id)
        if code is None:
            raise UnknownIdError("item", item_id)
        depth = min(k + 1, self.n_items)
        # Exact, straight over the memory-mapped unit vectors (no second index held per process).
        scores, labels = faiss.knn(np.array(self._item_unit[[code]]), self._item_unit, depth, faiss.METRIC_INNER_PRODUCT)
        keep = (labels[0] >= 0) & (labels[0] != code)
        labels, sc = labels[0][keep][:k], scores[0][keep][:k]
        return Recommendation(self.item_ids.take(labels), sc.astype(np.float64).tolist(), "similar")
