"""The serving bundle on disk: its files and version, writing one (with its FAISS index, built once), and
reading its arrays back memory-mapped. ``core.index.ServingBundle`` serves from what is read here.

Version 2 (``BUNDLE_VERSION``): every array is a ``.npy`` mapped read-only by each API process, so N processes
share one copy through the page cache; the index is ``index.faiss`` (``core.ann``). Version 1 bundles
(arrays + JSON id lists + seen.npz, no index) are still read by ``read_v1``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import faiss
import numpy as np
import scipy.sparse as sp

from core import ann
from core.ann import IndexInfo, IndexKind, IndexSpec
from core.idmap import IdMap
from core.storage import atomic_dir

# 2: the FAISS index is built by the worker and saved in the bundle (index.faiss, its parameters and recall in
# meta.json), and every array is a memory-mappable .npy (id maps, seen items, popular order) so API processes
# share one copy. Version 1 bundles (arrays + JSON id lists, index built at load) are still read.
BUNDLE_VERSION = 2
_FILES_V1 = ("meta.json", "user_emb.npy", "item_emb.npy", "user_ids.json", "item_ids.json", "seen.npz", "popularity.npy")
# Arrays of a version 2 bundle, each loaded memory-mapped (read-only).
_ARRAYS = ("user_emb", "item_emb", "item_unit", "popularity", "popular_order", "pop_counts", "seen_indptr",
           "seen_indices", "seen_ptr", "seen_bytes", "seen_masks")
_FILES = ("meta.json", "comma_widths.json", ann.INDEX_FILE, *(f"{a}.npy" for a in _ARRAYS),
          *IdMap.files("user"), *IdMap.files("item"))


class BundleError(ValueError):
    """A serving bundle is missing, malformed or inconsistent; the message names the file or field."""


class BuiltIndex(NamedTuple):
    """A FAISS index over a bundle's item embeddings and what was built (kind, parameters, recall@10)."""

    index: faiss.Index
    info: IndexInfo


def build_index(item_emb: np.ndarray, user_emb: np.ndarray, spec: IndexSpec | IndexKind) -> BuiltIndex:
    """The index ``spec`` picks for these items (a kind: that one), tuned and its recall@10 measured on these
    users' vectors."""
    spec = spec if isinstance(spec, IndexSpec) else IndexSpec(choice=spec)
    return BuiltIndex(*ann.build(np.ascontiguousarray(item_emb, dtype=np.float32), user_emb, spec))


def index_for(parts: BundleParts, index: IndexSpec | IndexKind, built: BuiltIndex | None) -> BuiltIndex:
    """``built`` (it must hold the parts' items), else the index ``index`` picks, built over them."""
    if built is None:
        built = build_index(parts.arrays["item_emb"], parts.arrays["user_emb"], index)
    if built.index.ntotal != parts.n_items or built.index.d != parts.dim:
        raise BundleError(f"index holds {built.index.ntotal} x {built.index.d}, items are {parts.n_items} x {parts.dim}")
    return built


def write_bundle(
    dir: str | os.PathLike[str],
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    user_ids: Sequence[str],
    item_ids: Sequence[str],
    seen: sp.spmatrix | sp.sparray,
    popularity: np.ndarray,
    model_id: str,
    index: IndexSpec | IndexKind = IndexSpec(),
    built: BuiltIndex | None = None,
) -> Path:
    """Write a serving bundle into ``dir`` atomically (``core.storage.atomic_dir``: a whole-folder swap), with
    its FAISS index (``built``, else built here from ``index``) so that loading it builds nothing."""
    target = Path(dir)
    parts = BundleParts.derive(user_emb, item_emb, user_ids, item_ids, seen, popularity)
    built = index_for(parts, index, built)
    with atomic_dir(target) as tmp:  # readers see the old bundle or the whole new one
        for name, arr in parts.arrays.items():
            np.save(tmp / f"{name}.npy", arr, allow_pickle=False)
        parts.users.save(tmp, "user")
        parts.items.save(tmp, "item")
        (tmp / "comma_widths.json").write_text(json.dumps(parts.comma_widths))
        ann.save(built.index, tmp)
        meta = {
            "version": BUNDLE_VERSION,
            "model_id": model_id,
            "dim": parts.dim,
            "n_users": parts.n_users,
            "n_items": parts.n_items,
            "mean_sq_norm": parts.mean_sq_norm,
            "index": built.info.to_json(),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return target


def read_index_info(dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The "index" entry of a bundle's meta.json (kind, params, recall@10, build_s); None for a version 1
    bundle (its index is built when loaded) or when the bundle is missing or unreadable."""
    try:
        meta = json.loads((Path(dir) / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    info = meta.get("index") if isinstance(meta, dict) else None
    return dict(info) if isinstance(info, dict) else None


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


def _comma_id_widths(item_ids: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """For item ids that contain commas: their first piece (left-stripped) -> their piece counts, longest
    first. A comma-separated exclude list is split back into ids by trying only these runs of pieces, so
    parsing stays linear in the list whatever the catalogue (see ``api.routers.recommend.parse_exclude``)."""
    widths: dict[str, set[int]] = {}
    for item in item_ids:
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
        return np.zeros(n_users + 1, dtype=np.int64), np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.uint8)
    change = np.empty(len(keys), dtype=bool)
    change[0] = True
    np.not_equal(keys[1:], keys[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    ukeys = keys[starts]
    inv_masks = ~np.bitwise_or.reduceat(mask, starts)
    indptr = np.searchsorted(ukeys // n_bytes, np.arange(n_users + 1), side="left").astype(np.int64)
    return indptr, (ukeys % n_bytes).astype(np.int32), inv_masks  # int32: any catalogue below 17e9 items


class BundleParts(NamedTuple):
    """Everything a bundle serves from besides its index: the arrays of ``_ARRAYS`` (derived once, when the
    bundle is written, and memory-mapped when it is loaded), the id maps and the comma-id widths."""

    arrays: dict[str, np.ndarray]
    users: IdMap
    items: IdMap
    comma_widths: dict[str, tuple[int, ...]]
    mean_sq_norm: float

    @property
    def n_users(self) -> int:
        return int(self.arrays["user_emb"].shape[0])

    @property
    def n_items(self) -> int:
        return int(self.arrays["item_emb"].shape[0])

    @property
    def dim(self) -> int:
        return int(self.arrays["item_emb"].shape[1])

    @classmethod
    def derive(cls, user_emb: np.ndarray, item_emb: np.ndarray, user_ids: Sequence[str], item_ids: Sequence[str],
               seen: sp.spmatrix | sp.sparray, popularity: np.ndarray) -> BundleParts:
        user_emb = np.ascontiguousarray(user_emb, dtype=np.float32)
        item_emb = np.ascontiguousarray(item_emb, dtype=np.float32)
        seen_csr = sp.csr_matrix(seen, dtype=np.float32)
        seen_csr.sum_duplicates()
        popularity = np.asarray(popularity, dtype=np.int64)
        _check_arrays(user_emb, item_emb, len(user_ids), len(item_ids), seen_csr, popularity)
        raw_items = [str(i) for i in item_ids]
        try:
            users, items = IdMap.from_ids([str(u) for u in user_ids]), IdMap.from_ids(raw_items)
        except ValueError as exc:
            raise BundleError(f"user_ids or item_ids: {exc}") from exc
        seen_ptr, seen_bytes, seen_masks = _seen_byte_masks(seen_csr)
        # Popular fallback: first occurrences in popularity order, then unlisted items in code order.
        n_items = item_emb.shape[0]
        _, first = np.unique(popularity, return_index=True)
        listed = popularity[np.sort(first)]
        rest = np.setdiff1d(np.arange(n_items), listed, assume_unique=True)
        norms = np.linalg.norm(item_emb, axis=1, keepdims=True)
        arrays = {
            "user_emb": user_emb,
            "item_emb": item_emb,
            "item_unit": np.ascontiguousarray(item_emb / np.maximum(norms, 1e-12), dtype=np.float32),
            "popularity": popularity,
            "popular_order": np.concatenate([listed, rest]).astype(np.int64),
            "pop_counts": np.bincount(seen_csr.indices, minlength=n_items).astype(np.float64),
            "seen_indptr": seen_csr.indptr.astype(np.int64),
            "seen_indices": seen_csr.indices.astype(np.int32),
            "seen_ptr": seen_ptr,
            "seen_bytes": seen_bytes,
            "seen_masks": seen_masks,
        }
        # The fold-in's ridge unit; a catalogue of zero vectors still gets a solvable system.
        mean_sq_norm = max(float(np.mean(norms.astype(np.float64) ** 2)), 1e-12)
        return cls(arrays, users, items, _comma_id_widths(raw_items), mean_sq_norm)

    @classmethod
    def load(cls, path: Path, meta: dict[str, Any]) -> BundleParts:
        # Plain ndarray views of the read-only maps (np.memmap's subclass overhead costs on every slice).
        arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r", allow_pickle=False).view(np.ndarray)
                  for name in _ARRAYS}
        widths = json.loads((path / "comma_widths.json").read_text())
        return cls(arrays, IdMap.load(path, "user"), IdMap.load(path, "item"),
                   {str(k): tuple(int(n) for n in v) for k, v in widths.items()}, float(meta["mean_sq_norm"]))


def read_v2(path: Path) -> tuple[dict[str, Any], BundleParts | None, BuiltIndex | None]:
    """meta.json, and for a version 2 bundle its parts and index, mapped read-only; (meta, None, None) for a
    version 1 bundle (``read_v1``). Raises ``BundleError`` naming the file or field that is wrong."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except FileNotFoundError:
        raise BundleError(f"serving bundle {path} is missing meta.json") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"serving bundle {path} is unreadable: {exc}") from exc
    version = meta.get("version") if isinstance(meta, dict) else None
    if version == 1:
        return meta, None, None
    if version != BUNDLE_VERSION:
        raise BundleError(f"serving bundle {path} has version {version!r}, expected {BUNDLE_VERSION} (or 1)")
    missing = [name for name in _FILES if not (path / name).is_file()]
    if missing:
        raise BundleError(f"serving bundle {path} is missing {', '.join(missing)}")
    try:
        info = IndexInfo.from_json(meta["index"])
        parts = BundleParts.load(path, meta)
        built = BuiltIndex(ann.load(path, info), info)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise BundleError(f"serving bundle {path} is unreadable: {exc}") from exc
    if (parts.n_users, parts.n_items, parts.dim) != (meta["n_users"], meta["n_items"], meta["dim"]) or (
        built.index.ntotal != parts.n_items
    ):
        raise BundleError(f"serving bundle {path}: arrays or index disagree with meta.json's sizes")
    return meta, parts, built


def read_v1(path: Path) -> dict[str, Any]:
    """A version 1 bundle's arrays (read into memory: that format cannot be mapped), as ``write_bundle`` takes
    them."""
    missing = [name for name in _FILES_V1 if not (path / name).is_file()]
    if missing:
        raise BundleError(f"serving bundle {path} is missing {', '.join(missing)}")
    try:
        return {
            "user_ids": json.loads((path / "user_ids.json").read_text()),
            "item_ids": json.loads((path / "item_ids.json").read_text()),
            "user_emb": np.load(path / "user_emb.npy", allow_pickle=False),
            "item_emb": np.load(path / "item_emb.npy", allow_pickle=False),
            "popularity": np.load(path / "popularity.npy", allow_pickle=False),
            "seen": sp.load_npz(path / "seen.npz").tocsr(),
        }
    except (OSError, ValueError) as exc:
        raise BundleError(f"serving bundle {path} is unreadable: {exc}") from exc
