"""Interaction data: reading files, id maps, k-core filter, splits and negative sampling.

Parsing uses the pandas C engine; bad-line numbers are found by a slow rescan only on the error path.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import logging
import lzma
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """A data file or its options are unusable; the message names the problem (and the line, if any)."""


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
    cols = _read_columns(
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


# --- file parsing -----------------------------------------------------------------------------------

_FORMATS = ("csv", "tsv", "parquet", "inter")
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".inter": "inter", ".parquet": "parquet", ".pq": "parquet"}
_COMPRESSION = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


@dataclass
class _Columns:
    users: pd.Series
    items: pd.Series
    timestamps: np.ndarray | None
    ratings: np.ndarray | None


@dataclass
class _TextDialect:
    """How a text file is tokenised; the error path re-reads it with Python's csv module the same way."""

    path: Path
    delimiter: str
    quoting: int
    skipinitialspace: bool

    def records(self) -> Iterator[tuple[int, list[str]]]:
        """Yield (1-based line number, fields) for each non-blank record, as pandas sees them."""
        opener = _COMPRESSION.get(self.path.suffix.lower())
        fh = (
            opener(self.path, "rt", encoding="utf-8-sig", errors="replace", newline="")
            if opener
            else open(self.path, encoding="utf-8-sig", errors="replace", newline="")  # noqa: SIM115
        )
        with fh:
            reader = csv.reader(
                fh, delimiter=self.delimiter, quoting=self.quoting, skipinitialspace=self.skipinitialspace
            )
            for row in reader:
                if row:  # pandas skips blank lines
                    yield reader.line_num, row

    def line_of(self, row: int) -> str:
        """'line N' of 0-based data row ``row`` (the header is line 1)."""
        for k, (line, _) in enumerate(self.records()):
            if k == row + 1:
                return f"line {line}"
        return f"line {row + 2}"

    def field_count_error(self) -> DataError | None:
        """The first record whose field count differs from the header's, as a DataError."""
        expected = None
        for line, fields in self.records():
            if expected is None:
                expected = len(fields)
            elif len(fields) != expected:
                return DataError(
                    f"{self.path.name}: line {line} has {len(fields)} fields, expected {expected} "
                    f"(delimiter {self.delimiter!r})"
                )
        return None


def _detect_format(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in _FORMATS:
            raise DataError(f"unknown format {fmt!r}; expected one of {', '.join(_FORMATS)}")
        return fmt
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext not in _EXTENSIONS:
        raise DataError(
            f"{path.name}: unknown file extension {ext or '(none)'!r}; expected one of "
            f"{', '.join(sorted(_EXTENSIONS))} (optionally .gz/.bz2/.xz), or pass fmt="
        )
    return _EXTENSIONS[ext]


def _resolve_column(path: Path, header: list[str], name: str, role: str, delimiter: str | None) -> str:
    """Exact header match first, then RecBole style ``name:type`` matched by the part before the colon."""
    if name in header:
        return name
    matches = [h for h in header if h.split(":", 1)[0] == name]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise DataError(f"{path.name}: {role} column {name!r} is ambiguous in line 1: {matches}")
    msg = f"{path.name}: missing {role} column {name!r} in line 1 (available: {', '.join(map(repr, header))})"
    if delimiter is not None and len(header) == 1:
        seen = [d for d in (",", "\t", ";", "|") if d != delimiter and d in header[0]]
        hint = f"; the header looks {seen[0]!r}-separated, pass sep={seen[0]!r}" if seen else ""
        msg += f"; line 1 has a single field: expected delimiter {delimiter!r}{hint}"
    raise DataError(msg)


def _decode_error(path: Path) -> DataError:
    opener = _COMPRESSION.get(path.suffix.lower(), open)
    with opener(path, "rb") as fh:
        for line, raw in enumerate(fh, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return DataError(f"{path.name}: line {line} is not valid UTF-8 text")
    return DataError(f"{path.name}: the file is not valid UTF-8 text")


def _dialect(path: Path, fmt: str, sep: str | None) -> _TextDialect:
    return _TextDialect(
        path=path,
        delimiter=sep or ("," if fmt == "csv" else "\t"),
        # Tab-separated files carry quotes inside titles ("Cuckoo's Nest"): quotes are plain text there.
        quoting=csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE,
        skipinitialspace=fmt == "csv",
    )


def _read_text(dialect: _TextDialect, nrows: int | None = None, numeric: Sequence[str] = ()) -> pd.DataFrame:
    """C-engine read; columns named in ``numeric`` are parsed as float64, the rest as str."""
    path = dialect.path
    dtype: dict[str, str] | type[str] = str
    if numeric:
        header = _read_text(dialect, nrows=0).columns
        dtype = {c: ("float64" if c.strip() in numeric else "str") for c in header}
    try:
        df = pd.read_csv(
            path, sep=dialect.delimiter, quoting=dialect.quoting, skipinitialspace=dialect.skipinitialspace,
            dtype=dtype, keep_default_na=False, na_filter=False, engine="c", encoding="utf-8", nrows=nrows,
        )
    except pd.errors.EmptyDataError:
        raise DataError(f"{path.name}: the file is empty") from None
    except UnicodeDecodeError:
        raise _decode_error(path) from None
    except pd.errors.ParserError as exc:
        raise (dialect.field_count_error() or DataError(f"{path.name}: unparsable file: {exc}")) from None
    except ValueError:
        if not numeric:
            raise
        # A non-numeric value (or a short line) in a numeric column: re-read as text to find the line.
        df = _read_text(dialect, nrows=nrows)
    df.columns = [str(c).strip() for c in df.columns]
    # Short lines are padded with "" by the C engine; only then pay for the rescan that finds them.
    last = df.iloc[:, -1] if len(df.columns) > 1 else None
    if last is not None and len(df) and last.dtype != np.float64 and (last == "").any():
        err = dialect.field_count_error()
        if err is not None:
            raise err
    return df


def _numeric(values: pd.Series, col: str, role: str, where: Callable[[int], str], name: str) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(values):
        out = values.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        out = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(out)
    if bad.any() and role == "timestamp" and not pd.api.types.is_numeric_dtype(values):
        stamps = pd.to_datetime(values, errors="coerce", utc=True, format="ISO8601")
        if stamps.notna().all():
            return ((stamps - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(1, "s")).to_numpy(dtype=np.float64)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{name}: non-numeric {role} {values.iloc[row]!r} in column {col!r} at {where(row)}")
    return out


def _ids(values: pd.Series, col: str, role: str, where: Callable[[int], str], name: str) -> pd.Series:
    if pd.api.types.is_float_dtype(values) and values.notna().all() and (values % 1 == 0).all():
        values = values.astype(np.int64)  # Parquet ints stored as float: "7", not "7.0"
    strings = values.astype(str).str.strip()
    missing = values.isna().to_numpy() | (strings == "").to_numpy()
    if missing.any():
        raise DataError(f"{name}: empty {role} in column {col!r} at {where(int(np.flatnonzero(missing)[0]))}")
    return strings


def _read_columns(
    path: Path,
    *,
    user_col: str,
    item_col: str,
    rating_col: str | None,
    timestamp_col: str | None,
    fmt: str | None,
    sep: str | None,
) -> _Columns:
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    fmt = _detect_format(path, fmt)
    if path.stat().st_size == 0:
        raise DataError(f"{path.name}: the file is empty")
    wanted = {"user id": user_col, "item id": item_col, "rating": rating_col, "timestamp": timestamp_col}
    given = [c for c in wanted.values() if c is not None]
    if len(set(given)) != len(given):
        raise DataError(f"column options must name different columns, got {wanted}")
    where: Callable[[int], str]
    if fmt == "parquet":
        if sep is not None:
            raise DataError("sep does not apply to Parquet files")
        try:
            header = [str(n) for n in pq.read_schema(path).names]
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{path.name}: not a readable Parquet file ({exc})") from None
        cols = {r: _resolve_column(path, header, c, r, None) for r, c in wanted.items() if c is not None}
        df = pd.read_parquet(path, columns=list(cols.values()))

        def where(row: int) -> str:
            return f"row {row + 1}"
    else:
        dialect = _dialect(path, fmt, sep)
        header = list(_read_text(dialect, nrows=0).columns)
        cols = {r: _resolve_column(path, header, c, r, dialect.delimiter) for r, c in wanted.items() if c is not None}
        df = _read_text(dialect, numeric=[cols[r] for r in ("rating", "timestamp") if r in cols])
        where = dialect.line_of
    if len(df) == 0:
        raise DataError(f"{path.name}: no interactions (the file has only a header, line 1)")

    def num(role: str) -> np.ndarray | None:
        return _numeric(df[cols[role]], cols[role], role, where, path.name) if role in cols else None

    return _Columns(
        users=_ids(df[cols["user id"]], cols["user id"], "user id", where, path.name),
        items=_ids(df[cols["item id"]], cols["item id"], "item id", where, path.name),
        ratings=num("rating"),
        timestamps=num("timestamp"),
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
