"""Parsing interaction files (CSV, TSV, RecBole .inter, Parquet) into raw columns.

Uses the pandas C engine; bad-line numbers are found by a slow rescan only on the error path.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import lzma
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd


class DataError(ValueError):
    """A data file or its options are unusable; the message names the problem (and the line, if any)."""


class MissingColumnError(DataError):
    """A column the options name is not in the file's header (a caller may say how to name the columns)."""


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
    raise MissingColumnError(msg)


def open_decompressed(path: Path) -> BinaryIO:
    """The file's bytes, decompressed on the fly when its suffix is .gz/.bz2/.xz."""
    opener = _COMPRESSION.get(path.suffix.lower())
    return opener(path, "rb") if opener else open(path, "rb")  # noqa: SIM115


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


def read_columns(
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
    try:
        return _read_columns(path, user_col=user_col, item_col=item_col, rating_col=rating_col,
                             timestamp_col=timestamp_col, fmt=fmt, sep=sep)
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        # A corrupt or truncated .gz/.bz2/.xz (found while reading), or a file we may not read.
        compressed = path.suffix.lower() in _COMPRESSION
        what = f"not a valid {path.suffix} file" if compressed else "cannot be read"
        raise DataError(f"{path.name}: {what} ({getattr(exc, 'strerror', None) or exc})") from None


def _read_columns(
    path: Path,
    *,
    user_col: str,
    item_col: str,
    rating_col: str | None,
    timestamp_col: str | None,
    fmt: str,
    sep: str | None,
) -> _Columns:
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
        import pyarrow as pa  # imported here: only Parquet needs it
        import pyarrow.parquet as pq

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
