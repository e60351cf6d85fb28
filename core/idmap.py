"""Raw id <-> integer code maps of a serving bundle, kept in two memory-mappable ``.npy`` arrays.

A Python dict of a million string ids costs ~150 MB in every API process; these arrays are mapped
read-only from the bundle, so every process serving it shares one copy through the page cache.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

# Appended to every encoded id before it is stored fixed-width: numpy's ``S`` dtype drops trailing NUL
# bytes, and 0xFF never occurs in UTF-8, so an id ending in "\x00" stays distinct and exact.
_END = b"\xff"


def _encode(ids: Iterable[str]) -> np.ndarray:
    return np.array([str(i).encode("utf-8") + _END for i in ids], dtype=np.bytes_)


class IdMap:
    """Codes ``0..n-1`` and their raw string ids: ``ids[code]`` (code order), the ids sorted and ``order``
    (their codes), so a lookup is one vectorised binary search; all three arrays may be memory-mapped."""

    def __init__(self, ids: np.ndarray, sorted_ids: np.ndarray, order: np.ndarray) -> None:
        if ids.ndim != 1 or order.shape != ids.shape or sorted_ids.shape != ids.shape:
            raise ValueError("id map arrays must be 1-d and of equal length")
        self._ids = ids  # [n] fixed-width bytes, code order
        self._sorted = sorted_ids  # [n] the same ids, sorted
        self._order = order  # [n] the code of each sorted id

    @classmethod
    def from_ids(cls, ids: Sequence[str]) -> IdMap:
        encoded = _encode(ids) if len(ids) else np.zeros(0, dtype="S1")
        order = np.argsort(encoded, kind="stable").astype(np.int64)
        sorted_ids = encoded[order]
        if len(order) > 1 and (sorted_ids[1:] == sorted_ids[:-1]).any():
            raise ValueError("ids are not unique")
        return cls(encoded, sorted_ids, order)

    def save(self, folder: Path, name: str) -> None:
        np.save(folder / f"{name}_ids.npy", self._ids, allow_pickle=False)
        np.save(folder / f"{name}_sorted.npy", self._sorted, allow_pickle=False)
        np.save(folder / f"{name}_order.npy", self._order, allow_pickle=False)

    @classmethod
    def load(cls, folder: str | os.PathLike[str], name: str, mmap: bool = True) -> IdMap:
        mode = "r" if mmap else None
        folder = Path(folder)
        # Plain ndarray views of the maps: np.memmap's subclass machinery made a 10-id lookup ~15x slower.
        arrays = (np.load(folder / file, mmap_mode=mode, allow_pickle=False).view(np.ndarray) for file in cls.files(name))
        return cls(*arrays)

    @staticmethod
    def files(name: str) -> tuple[str, str]:
        return f"{name}_ids.npy", f"{name}_sorted.npy", f"{name}_order.npy"

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    def __getitem__(self, code: int) -> str:
        return self._ids[int(code)][:-1].decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        for code in range(len(self)):
            yield self[code]

    def __contains__(self, value: object) -> bool:
        return isinstance(value, str) and self.get(value) is not None

    def tolist(self) -> list[str]:
        return list(self)

    def take(self, codes: np.ndarray) -> list[str]:
        """The raw ids of ``codes`` (a few per request), in order."""
        return [b[:-1].decode("utf-8") for b in self._ids[np.asarray(codes, dtype=np.int64)].tolist()]

    def codes(self, values: Sequence[str]) -> np.ndarray:
        """Codes of ``values``, -1 for unknown ones; one vectorised binary search."""
        if len(values) == 0 or len(self) == 0:
            return np.full(len(values), -1, dtype=np.int64)
        keys = _encode(values)
        pos = np.minimum(np.searchsorted(self._sorted, keys), len(self) - 1)
        hit = self._sorted[pos] == keys  # a key longer than the stored width compares unequal, as it should
        return np.where(hit, self._order[pos], -1).astype(np.int64)

    def get(self, value: str) -> int | None:
        """The code of one id (None when unknown): a scalar binary search, ~1.5 us at 1M ids."""
        key = str(value).encode("utf-8") + _END
        pos = int(self._sorted.searchsorted(key))
        if pos < len(self._sorted) and self._sorted[pos] == key:
            return int(self._order[pos])
        return None
