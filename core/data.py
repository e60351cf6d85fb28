"""Interaction data: id maps, k-core filter, splits and negative sampling (file parsing: core.data_read)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from core.data_read import DataError, read_columns

__all__ = [
    "DataError", "UntrainableData", "Interactions", "SplitData", "NegativeSampler", "load_interactions", "split",
    "check_trainable",
]

logger = logging.getLogger(__name__)


class UntrainableData(DataError):
    """The file parses, but no job could train and evaluate on it (too few users/items, nothing to hold out)."""



@dataclass
class Interactions:
    """Implicit user-item interactions with dense codes; ``user_ids[code]`` is the raw id."""

    users: np.ndarray  # int64 [N] user codes
    items: np.ndarray  # int64 [N] item codes
    user_ids: np.ndarray  # str [n_users]
    item_ids: np.ndarray  # str [n_items]
    timestamps: np.ndarray | None = None  # float64 [N]
    ratings: np.ndarray | None = None  # float64 [N], the raw rating of each kept row
    source: str = field(default="", compare=False)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def __len__(self) -> int:
        return len(self.users)

    @cached_property
    def user_index(self) -> dict[str, int]:
        return {uid: code for code, uid in enumerate(self.user_ids.tolist())}

    @cached_property
    def item_index(self) -> dict[str, int]:
        return {iid: code for code, iid in enumerate(self.item_ids.tolist())}

    @classmethod
    def from_arrays(
        cls,
        users: Sequence[object] | np.ndarray,
        items: Sequence[object] | np.ndarray,
        timestamps: Sequence[float] | np.ndarray | None = None,
        ratings: Sequence[float] | np.ndarray | None = None,
        *,
        rating_threshold: float | None = None,
        kcore: int = 0,
        source: str = "arrays",
    ) -> Interactions:
        """Build from raw ids (cast to str): threshold, de-duplicate, k-core, then code densely."""
        u = pd.Series(users).astype(str).to_numpy()
        i = pd.Series(items).astype(str).to_numpy()
        if len(u) != len(i):
            raise DataError(f"users and items differ in length ({len(u)} != {len(i)})")
        ts = None if timestamps is None else np.asarray(timestamps, dtype=np.float64)
        rt = None if ratings is None else np.asarray(ratings, dtype=np.float64)
        for name, arr in (("timestamps", ts), ("ratings", rt)):
            if arr is not None and len(arr) != len(u):
                raise DataError(f"{name} has {len(arr)} values for {len(u)} interactions")
        return build_interactions(u, i, ts, rt, rating_threshold=rating_threshold, kcore=kcore, source=source)


def build_interactions(
    users: pd.Series | np.ndarray,
    items: pd.Series | np.ndarray,
    timestamps: np.ndarray | None,
    ratings: np.ndarray | None,
    *,
    rating_threshold: float | None,
    kcore: int,
    source: str,
) -> Interactions:
    """Shared tail of every loader: threshold -> collapse duplicates -> k-core -> dense codes."""
    if kcore < 0:
        raise DataError(f"kcore must be >= 0, got {kcore}")
    if len(users) == 0:
        raise DataError(f"{source}: no interactions (the file has no data rows)")
    if rating_threshold is not None:
        if ratings is None:
            raise DataError("rating_threshold needs a rating column (pass rating_col=...)")
        keep = ratings >= rating_threshold
        if not keep.any():
            raise DataError(
                f"{source}: nothing left after rating_threshold={rating_threshold} "
                f"(ratings range {ratings.min():g}..{ratings.max():g})"
            )
        users, items = users[keep], items[keep]
        timestamps = None if timestamps is None else timestamps[keep]
        ratings = ratings[keep]

    ucodes, uids = pd.factorize(pd.Series(users), sort=True)
    icodes, iids = pd.factorize(pd.Series(items), sort=True)
    ucodes, icodes = ucodes.astype(np.int64), icodes.astype(np.int64)
    key = ucodes * len(iids) + icodes
    if timestamps is not None:
        # Keep the latest row of each (user, item) pair; stable sort keeps ties in file order.
        order = np.lexsort((timestamps, key))
        last = np.r_[key[order][1:] != key[order][:-1], True]
        keep_idx = np.sort(order[last])
    else:
        _, keep_idx = np.unique(key, return_index=True)
        keep_idx = np.sort(keep_idx)
    if len(keep_idx) < len(key):
        logger.info("%s: collapsed %d duplicate (user, item) rows", source, len(key) - len(keep_idx))
    ucodes, icodes = ucodes[keep_idx], icodes[keep_idx]
    timestamps = None if timestamps is None else timestamps[keep_idx]
    ratings = None if ratings is None else ratings[keep_idx]
    uids, iids = np.asarray(uids, dtype=object), np.asarray(iids, dtype=object)

    if kcore > 1:
        while True:
            cu = np.bincount(ucodes, minlength=len(uids))
            ci = np.bincount(icodes, minlength=len(iids))
            keep = (cu[ucodes] >= kcore) & (ci[icodes] >= kcore)
            if keep.all():
                break
            ucodes, icodes = ucodes[keep], icodes[keep]
            timestamps = None if timestamps is None else timestamps[keep]
            ratings = None if ratings is None else ratings[keep]
            if len(ucodes) == 0:
                raise DataError(f"{source}: nothing left after the {kcore}-core filter")
        # Re-code densely; np.unique keeps the sorted raw-id order.
        ukept, ucodes = np.unique(ucodes, return_inverse=True)
        ikept, icodes = np.unique(icodes, return_inverse=True)
        uids, iids = uids[ukept], iids[ikept]
    return Interactions(
        users=ucodes.astype(np.int64),
        items=icodes.astype(np.int64),
        user_ids=uids.astype(str),
        item_ids=iids.astype(str),
        timestamps=timestamps,
        ratings=ratings,
        source=source,
    )


def load_interactions(
    path: str | Path,
    *,
    user_col: str = "user_id",
    item_col: str = "item_id",
    rating_col: str | None = None,
    timestamp_col: str | None = None,
    fmt: str | None = None,
    sep: str | None = None,
    rating_threshold: float | None = None,
    kcore: int = 0,
) -> Interactions:
    """Read a CSV/TSV/Parquet/RecBole ``.inter`` file into :class:`Interactions` (see docs/contracts.md)."""
    path = Path(path)
    cols = read_columns(
        path, user_col=user_col, item_col=item_col, rating_col=rating_col,
        timestamp_col=timestamp_col, fmt=fmt, sep=sep,
    )
    inter = build_interactions(
        cols.users, cols.items, cols.timestamps, cols.ratings,
        rating_threshold=rating_threshold, kcore=kcore, source=path.name,
    )
    logger.info(
        "loaded %s: %d users, %d items, %d interactions", path.name, inter.n_users, inter.n_items, len(inter)
    )
    return inter


def check_trainable(inter: Interactions) -> None:
    """Raise :class:`UntrainableData` for data no split could train and evaluate on.

    The weakest condition any job's split can meet: a model needs two users and two items to rank anything,
    and :func:`split` keeps at least one training item per user, so a held-out (valid/test) interaction
    needs a user with two or more distinct items (``ratios=(0.5, 0, 0.5)``; the default 0.8/0.1/0.1 needs
    five, ``loo`` three).
    """
    if inter.n_users < 2 or inter.n_items < 2:
        raise UntrainableData(
            f"{inter.source}: {inter.n_users} user(s) x {inter.n_items} item(s) after de-duplication; "
            "training needs at least 2 users and 2 items"
        )
    if len(inter) == 0 or np.bincount(inter.users, minlength=inter.n_users).max() < 2:
        raise UntrainableData(
            f"{inter.source}: no user has 2 or more distinct items, so no interaction can be held out "
            "for validation or test (every user keeps one for training)"
        )


# --- splits -------------------------------------------------------------------------------------------


@dataclass
class SplitData:
    """Train/valid/test interaction matrices (n_users x n_items, float32 ones) plus id maps."""

    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    user_ids: np.ndarray
    item_ids: np.ndarray
    fingerprint: str

    @property
    def n_users(self) -> int:
        return int(self.train.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.train.shape[1])

    def train_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        coo = self.train.tocoo()
        return coo.row.astype(np.int64), coo.col.astype(np.int64)


def _csr(users: np.ndarray, items: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    mat = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)), shape=shape)
    mat.sort_indices()
    return mat


def fingerprint(mats: Sequence[sp.csr_matrix], user_ids: np.ndarray, item_ids: np.ndarray) -> str:
    """sha256 over the matrices' structure and both id maps (length-prefixed, so no separator clashes)."""
    h = hashlib.sha256()
    for mat in mats:
        h.update(np.asarray(mat.shape, dtype=np.int64).tobytes())
        h.update(mat.indptr.astype(np.int64).tobytes())
        h.update(mat.indices.astype(np.int64).tobytes())
    for ids in (user_ids, item_ids):
        h.update(len(ids).to_bytes(8, "little"))
        for raw in ids.tolist():
            b = str(raw).encode("utf-8")
            h.update(len(b).to_bytes(4, "little") + b)
    return h.hexdigest()


def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    if len(ratios) != 3 or any(not np.isfinite(r) or r < 0 for r in ratios):
        raise DataError(f"ratios must be three non-negative numbers (train, valid, test), got {tuple(ratios)}")
    if abs(sum(ratios) - 1.0) > 1e-6 or ratios[0] <= 0:
        raise DataError(f"ratios must sum to 1 with a positive train share, got {tuple(ratios)}")
    return float(ratios[0]), float(ratios[1]), float(ratios[2])


def split(
    inter: Interactions,
    *,
    mode: str = "random",
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> SplitData:
    """Per-user split into train/valid/test.

    ``random``: each user's interactions are shuffled and cut by ``ratios`` (valid and test get
    ``round(n * share)`` each, train keeps the rest and at least one). ``loo``: users with >= 3
    interactions give their latest (by timestamp, else a random one) to test and the next to valid.
    """
    if mode not in ("random", "loo"):
        raise DataError(f"unknown split mode {mode!r}; expected 'random' or 'loo'")
    if len(inter) == 0:
        raise DataError("cannot split an empty interaction set")
    rng = np.random.default_rng(seed)
    users, items = inter.users, inter.items
    noise = rng.random(len(users))
    if mode == "loo" and inter.timestamps is not None:
        order = np.lexsort((noise, inter.timestamps, users))  # by user, then time, ties at random
    else:
        order = np.lexsort((noise, users))
    counts = np.bincount(users, minlength=inter.n_users)  # [n_users]
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    su = users[order]
    pos = np.arange(len(order)) - starts[su]  # position of each row within its user's (ordered) list
    n = counts[su]
    part = np.zeros(len(order), dtype=np.int8)  # 0 train, 1 valid, 2 test
    if mode == "loo":
        eligible = n >= 3
        part[eligible & (pos == n - 1)] = 2
        part[eligible & (pos == n - 2)] = 1
    else:
        _, r_valid, r_test = _check_ratios(ratios)
        n_valid = np.floor(counts * r_valid + 0.5).astype(np.int64)
        n_test = np.floor(counts * r_test + 0.5).astype(np.int64)
        # Every user keeps at least one training item: trim test first, then valid.
        over = np.maximum(n_valid + n_test - (counts - 1), 0)
        cut = np.minimum(over, n_test)
        n_test -= cut
        n_valid -= over - cut
        n_train = counts - n_valid - n_test
        part[pos >= n_train[su]] = 1
        part[pos >= (n_train + n_valid)[su]] = 2
    shape = (inter.n_users, inter.n_items)
    si = items[order]
    mats = [_csr(su[part == k], si[part == k], shape) for k in range(3)]
    return SplitData(
        train=mats[0], valid=mats[1], test=mats[2],
        user_ids=inter.user_ids, item_ids=inter.item_ids,
        fingerprint=fingerprint(mats, inter.user_ids, inter.item_ids),
    )


# --- negative sampling ----------------------------------------------------------------------------


class NegativeSampler:
    """Uniform negatives among each user's unobserved training items (rejection sampling, vectorised).

    A few vectorised rejection rounds settle almost every draw; the rare leftovers (users who have
    seen most of the catalogue) are drawn exactly from their complement. A user who has seen every
    item gets a uniform item, since no negative exists.
    """

    _ROUNDS = 20

    def __init__(self, train: sp.csr_matrix, seed: int = 0) -> None:
        self.train = train.tocsr()
        self.n_items = train.shape[1]
        self.rng = np.random.default_rng(seed)
        # Sorted per-user positives as one int64 key space: user * n_items + item.
        coo = self.train.tocoo()
        self._keys = np.unique(coo.row.astype(np.int64) * self.n_items + coo.col.astype(np.int64))

    def _is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        if len(self._keys) == 0:
            return np.zeros(len(users), dtype=bool)
        keys = users.astype(np.int64) * self.n_items + items
        pos = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        return self._keys[pos] == keys

    def reseed(self, seed: int) -> NegativeSampler:
        """Restart the random stream (the sorted positive keys are kept: they depend only on ``train``)."""
        self.rng = np.random.default_rng(seed)
        return self

    def sample(self, users: np.ndarray) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        items = self.rng.integers(0, self.n_items, size=len(users))
        bad = self._is_positive(users, items)
        for _ in range(self._ROUNDS):
            if not bad.any():
                return items
            idx = np.flatnonzero(bad)
            items[idx] = self.rng.integers(0, self.n_items, size=len(idx))
            bad[idx] = self._is_positive(users[idx], items[idx])
        for k in np.flatnonzero(bad):
            seen = self.train.indices[self.train.indptr[users[k]] : self.train.indptr[users[k] + 1]]
            free = np.setdiff1d(np.arange(self.n_items), seen, assume_unique=False)
            if len(free):
                items[k] = free[self.rng.integers(len(free))]
        return items
