"""FAISS serving bundle: write a model's embeddings + id maps + seen items, load them, search top-K.

No torch here: the API process loads bundles written by the worker (numpy/JSON/npz files only).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import faiss
import numpy as np
import scipy.sparse as sp

from core.storage import atomic_dir

logger = logging.getLogger(__name__)

BUNDLE_VERSION = 1
_NO_CODES = np.zeros(0, dtype=np.int64)
IndexKind = Literal["flat", "hnsw"]
# Ridge of the new-user fold-in (``ServingBundle.recommend_items``), in units of the catalogue's mean squared
# item-embedding norm, so that one value fits models whatever their embedding scale (scaling every
# embedding by c scales V^T V by c^2; a ridge scaled alike leaves the ranking unchanged). Chosen on held-out
# users' validation items of ML-100K (bench/foldin_quality.py, bench/results/foldin-ml-100k.json), never
# on their test items.
FOLDIN_RIDGE = 100.0
_FILES = ("meta.json", "user_emb.npy", "item_emb.npy", "user_ids.json", "item_ids.json", "seen.npz", "popularity.npy")


class BundleError(ValueError):
    """A serving bundle is missing, malformed or inconsistent; the message names the file or field."""


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


def write_bundle(
    dir: str | os.PathLike[str],
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    user_ids: Sequence[str],
    item_ids: Sequence[str],
    seen: sp.spmatrix | sp.sparray,
    popularity: np.ndarray,
    model_id: str,
) -> Path:
    """Write a serving bundle into ``dir`` atomically (``core.storage.atomic_dir``: a whole-folder swap)."""
    target = Path(dir)
    user_emb = np.ascontiguousarray(user_emb, dtype=np.float32)
    item_emb = np.ascontiguousarray(item_emb, dtype=np.float32)
    seen_csr = sp.csr_matrix(seen, dtype=np.float32)
    popularity = np.asarray(popularity, dtype=np.int64)
    _check_arrays(user_emb, item_emb, len(user_ids), len(item_ids), seen_csr, popularity)
    with atomic_dir(target) as tmp:  # readers see the old bundle or the whole new one
        np.save(tmp / "user_emb.npy", user_emb, allow_pickle=False)
        np.save(tmp / "item_emb.npy", item_emb, allow_pickle=False)
        np.save(tmp / "popularity.npy", popularity, allow_pickle=False)
        sp.save_npz(tmp / "seen.npz", seen_csr, compressed=True)
        (tmp / "user_ids.json").write_text(json.dumps([str(u) for u in user_ids]))
        (tmp / "item_ids.json").write_text(json.dumps([str(i) for i in item_ids]))
        meta = {
            "version": BUNDLE_VERSION,
            "model_id": model_id,
            "dim": int(item_emb.shape[1]),
            "n_users": int(user_emb.shape[0]),
            "n_items": int(item_emb.shape[0]),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return target


def _check_arrays(
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    n_user_ids: int,
    n_item_ids: int,
    seen: sp.csr_matrix,
    popularity: np.ndarray,
) -> None:
    if user_emb.ndim != 2 or item_emb.ndim != 2:
        raise BundleError("user_emb and item_emb must be 2-d arrays")
    if user_emb.shape[1] != item_emb.shape[1]:
        raise BundleError(f"embedding dims differ: user_emb {user_emb.shape[1]} vs item_emb {item_emb.shape[1]}")
    if user_emb.shape[0] != n_user_ids:
        raise BundleError(f"user_emb has {user_emb.shape[0]} rows but user_ids has {n_user_ids}")
    if item_emb.shape[0] != n_item_ids:
        raise BundleError(f"item_emb has {item_emb.shape[0]} rows but item_ids has {n_item_ids}")
    if item_emb.shape[0] == 0:
        raise BundleError("item_emb is empty: nothing to serve")
    if seen.shape != (user_emb.shape[0], item_emb.shape[0]):
        raise BundleError(f"seen shape {seen.shape} != (n_users, n_items) {(user_emb.shape[0], item_emb.shape[0])}")
    if popularity.ndim != 1 or (len(popularity) and (popularity.min() < 0 or popularity.max() >= item_emb.shape[0])):
        raise BundleError("popularity must be a 1-d array of item codes in [0, n_items)")
    if not (np.isfinite(user_emb).all() and np.isfinite(item_emb).all()):
        raise BundleError("embeddings contain NaN or inf")


def _build_index(emb: np.ndarray, kind: IndexKind, hnsw_m: int, ef_search: int) -> faiss.Index:
    dim = emb.shape[1]
    if kind == "flat":
        index: faiss.Index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = max(2 * hnsw_m, 80)
        index.hnsw.efSearch = ef_search
    else:
        raise BundleError(f"unknown index kind {kind!r}: expected 'flat' or 'hnsw'")
    index.add(emb)
    return index


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


def _comma_id_widths(item_index: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """For item ids that contain commas: their first piece (left-stripped) -> their piece counts, longest
    first. A comma-separated exclude list is split back into ids by trying only these runs of pieces, so
    parsing stays linear in the list whatever the catalogue (see ``api.routers.recommend.parse_exclude``)."""
    widths: dict[str, set[int]] = {}
    for item in item_index:
        if "," in item:
            pieces = item.split(",")
            widths.setdefault(pieces[0].lstrip(), set()).add(len(pieces))
    return {first: tuple(sorted(ns, reverse=True)) for first, ns in widths.items()}


def _seen_byte_masks(seen: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per user, the bitmap bytes holding seen items and their OR-ed bit masks, CSR-like: O(seen) memory,
    so a request clears its user's seen items with one fancy-indexed AND."""
    n_users = seen.shape[0]
    rows = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(seen.indptr))
    cols = seen.indices.astype(np.int64)
    n_bytes = (seen.shape[1] + 7) // 8
    keys = rows * n_bytes + (cols >> 3)
    order = np.argsort(keys, kind="stable")
    keys, cols = keys[order], cols[order]
    mask = np.left_shift(1, cols & 7).astype(np.uint8)
    if len(keys) == 0:
        return np.zeros(n_users + 1, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint8)
    change = np.empty(len(keys), dtype=bool)
    change[0] = True
    np.not_equal(keys[1:], keys[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    ukeys = keys[starts]
    inv_masks = ~np.bitwise_or.reduceat(mask, starts)
    indptr = np.searchsorted(ukeys // n_bytes, np.arange(n_users + 1), side="left").astype(np.int64)
    return indptr, (ukeys % n_bytes).astype(np.int64), inv_masks


class ServingBundle:
    """A loaded bundle: FAISS inner-product index over item embeddings, id maps, seen items, popularity."""

    def __init__(
        self,
        user_emb: np.ndarray,
        item_emb: np.ndarray,
        user_ids: list[str],
        item_ids: list[str],
        seen: sp.csr_matrix,
        popularity: np.ndarray,
        model_id: str,
        kind: IndexKind = "flat",
        hnsw_m: int = 32,
        ef_search: int = 128,
    ) -> None:
        self.user_emb = np.ascontiguousarray(user_emb, dtype=np.float32)
        self.item_emb = np.ascontiguousarray(item_emb, dtype=np.float32)
        self.seen = sp.csr_matrix(seen)
        self.popularity = np.asarray(popularity, dtype=np.int64)
        _check_arrays(self.user_emb, self.item_emb, len(user_ids), len(item_ids), self.seen, self.popularity)
        self.user_ids = list(user_ids)
        self.item_ids = np.asarray(item_ids, dtype=object)
        self.user_index = {u: i for i, u in enumerate(self.user_ids)}
        self.item_index = {it: i for i, it in enumerate(item_ids)}
        self.comma_id_widths = _comma_id_widths(self.item_index)
        self.model_id = model_id
        self.kind: IndexKind = kind
        self.ef_search = ef_search
        self.index = _build_index(self.item_emb, kind, hnsw_m, ef_search)
        self._scratch = threading.local()
        self._seen_ptr, self._seen_bytes, self._seen_inv_masks = _seen_byte_masks(self.seen)
        # Popular fallback: first occurrences in popularity order, then unlisted items in code order.
        _, first = np.unique(self.popularity, return_index=True)
        listed = self.popularity[np.sort(first)]
        rest = np.setdiff1d(np.arange(self.n_items), listed, assume_unique=True)
        self._popular_order = np.concatenate([listed, rest]).astype(np.int64)
        self._pop_counts = np.asarray(self.seen.sum(axis=0), dtype=np.float64).ravel()
        norms = np.linalg.norm(self.item_emb, axis=1, keepdims=True)
        # The fold-in's ridge unit; a catalogue of zero vectors still gets a solvable system.
        self.mean_sq_norm = max(float(np.mean(norms.astype(np.float64) ** 2)), 1e-12)
        self._item_unit = np.ascontiguousarray(self.item_emb / np.maximum(norms, 1e-12), dtype=np.float32)
        self.sim_index = faiss.IndexFlatIP(self.dim)
        self.sim_index.add(self._item_unit)

    @property
    def n_items(self) -> int:
        return int(self.item_emb.shape[0])

    @property
    def n_users(self) -> int:
        return int(self.user_emb.shape[0])

    @property
    def dim(self) -> int:
        return int(self.item_emb.shape[1])

    def set_ef_search(self, ef_search: int) -> None:
        """HNSW only: candidates explored per query (higher: better recall, slower)."""
        if self.kind != "hnsw":
            raise BundleError("ef_search applies to hnsw indexes only")
        self.ef_search = ef_search
        self.index.hnsw.efSearch = ef_search

    @classmethod
    def load(cls, dir: str | os.PathLike[str], kind: IndexKind = "flat", **index_opts: int) -> ServingBundle:
        """Load a bundle written by ``write_bundle``; raises ``BundleError`` naming what is wrong."""
        path = Path(dir)
        missing = [name for name in _FILES if not (path / name).is_file()]
        if missing:
            raise BundleError(f"serving bundle {path} is missing {', '.join(missing)}")
        try:
            meta = json.loads((path / "meta.json").read_text())
            user_ids = json.loads((path / "user_ids.json").read_text())
            item_ids = json.loads((path / "item_ids.json").read_text())
            user_emb = np.load(path / "user_emb.npy", allow_pickle=False)
            item_emb = np.load(path / "item_emb.npy", allow_pickle=False)
            popularity = np.load(path / "popularity.npy", allow_pickle=False)
            seen = sp.load_npz(path / "seen.npz").tocsr()
        except (OSError, ValueError) as exc:
            raise BundleError(f"serving bundle {path} is unreadable: {exc}") from exc
        if meta.get("version") != BUNDLE_VERSION:
            raise BundleError(f"serving bundle {path} has version {meta.get('version')!r}, expected {BUNDLE_VERSION}")
        bundle = cls(user_emb, item_emb, user_ids, item_ids, seen, popularity, str(meta["model_id"]), kind, **index_opts)
        logger.info("loaded %s bundle of model %s: %d users x %d items, dim %d",
                    kind, bundle.model_id, bundle.n_users, bundle.n_items, bundle.dim)
        return bundle

    # ----------------------------------------------------------------------------------------- recommend
    def _exclude_codes(self, exclude: Iterable[str]) -> np.ndarray:
        codes = [self.item_index[i] for i in exclude if i in self.item_index]
        return np.asarray(codes, dtype=np.int64)

    def _popular(self, k: int, offset: int, excluded: np.ndarray) -> Recommendation:
        order = self._popular_order
        if len(excluded):
            order = order[~np.isin(order, excluded)]
        codes = order[offset : offset + k]
        return Recommendation(self.item_ids[codes].tolist(), self._pop_counts[codes].tolist(), "popular")

    def _result(self, labels: np.ndarray, scores: np.ndarray, k: int, offset: int) -> Recommendation:
        if len(labels) and labels[-1] < 0:  # FAISS pads missing hits with -1 at the end
            keep = labels >= 0
            labels, scores = labels[keep], scores[keep]
        labels, scores = labels[offset : offset + k], scores[offset : offset + k]
        return Recommendation(self.item_ids[labels].tolist(), scores.astype(np.float64).tolist(), "personalized")

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
        codes = [self.user_index.get(u) for u in user_ids]
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
        depth = min(k + offset, self.n_items)
        query = self.user_emb[code : code + 1]  # [1, d]
        if exclude_seen or len(excluded):
            scores, labels = self.index.search(query, depth, params=self._filter(code, exclude_seen, excluded, depth))
        else:
            scores, labels = self.index.search(query, depth)
        return self._result(labels[0], scores[0], k, offset)

    def _filter(self, user: int | None, exclude_seen: bool, excluded: np.ndarray, depth: int) -> faiss.SearchParameters:
        """This thread's reusable search parameters, its bitmap set to the items the user may get.

        Building FAISS selector objects costs more than the search itself, so each thread builds them
        once over its own scratch bitmap; a search runs to completion before the thread reuses it.
        """
        scratch = self._scratch
        if not hasattr(scratch, "params"):
            scratch.bits = np.zeros((self.n_items + 7) // 8, dtype=np.uint8)
            scratch.selector = faiss.IDSelectorBitmap(len(scratch.bits), faiss.swig_ptr(scratch.bits))
            if self.kind == "hnsw":
                scratch.params = faiss.SearchParametersHNSW(sel=scratch.selector, efSearch=self.ef_search)
            else:
                scratch.params = faiss.SearchParameters(sel=scratch.selector)
        # The allowed-items bitmap is built per request from the user's CSR row: O(items/8 + seen) time and
        # no users x items table in memory.
        bits = scratch.bits
        bits.fill(0xFF)
        if exclude_seen and user is not None:
            lo, hi = self._seen_ptr[user], self._seen_ptr[user + 1]
            bits[self._seen_bytes[lo:hi]] &= self._seen_inv_masks[lo:hi]
        if len(excluded):
            _clear_bits(bits, excluded)
        if self.kind == "hnsw":
            scratch.params.efSearch = max(self.ef_search, depth)
        return scratch.params

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
        depth = min(k + offset, self.n_items)
        scores, labels = self.index.search(query, depth, params=self._filter(None, False, excluded, depth))
        return self._result(labels[0], scores[0], k, offset)._replace(source="folded_in")

    def similar(self, item_id: str, k: int) -> Recommendation:
        """The ``k`` items with the highest cosine similarity to ``item_id`` (the item itself excluded)."""
        if k <= 0:
            raise ValueError(f"k must be > 0 (got {k})")
        code = self.item_index.get(item_id)
        if code is None:
            raise UnknownIdError("item", item_id)
        depth = min(k + 1, self.n_items)
        scores, labels = self.sim_index.search(self._item_unit[[code]], depth)
        keep = (labels[0] >= 0) & (labels[0] != code)
        labels, sc = labels[0][keep][:k], scores[0][keep][:k]
        return Recommendation(self.item_ids[labels].tolist(), sc.astype(np.float64).tolist(), "similar")
