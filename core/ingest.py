"""Upload ingestion: ``python -m core.ingest`` parses and validates one stored upload in a child process.

The parent sends a JSON :class:`IngestRequest` on stdin and reads one JSON line back, so a large file or a
decompression bomb costs the child's memory (watched by the parent, api.ingest), never the API's. Also the sweep of crash leftovers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import lzma
import math
import os
import re
import resource
import shutil
import signal
import socket
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from core.data import DataError, UntrainableData, check_trainable, load_interactions
from core.data_read import open_decompressed
from core.db import repo

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_COMPRESSED = (".gz", ".bz2", ".xz")
_ID_RE = re.compile(r"[0-9a-f]{32}")


class DecompressedTooLarge(DataError):
    """The data is larger than the allowed size once decompressed."""


@dataclass
class IngestRequest:
    """One stored upload and the options it is read with (the fields of the data set's row)."""

    path: str
    fmt: str
    user_col: str
    item_col: str
    rating_col: str | None
    timestamp_col: str | None
    sep: str | None
    rating_threshold: float | None
    max_decompressed_bytes: int
    timeout_s: float


def decompressed_size(path: Path, fmt: str, limit: int) -> int:
    """Bytes the parser would read, counted through a stream that stops just past ``limit``.

    Raises :class:`DecompressedTooLarge` past ``limit``. Parquet counts its column chunks' uncompressed size
    (its own codecs can be bombs too); a file that is not Parquet at all is left for the parser to name.
    """
    if path.suffix.lower() not in _COMPRESSED:
        size = path.stat().st_size
        if fmt == "parquet":
            import pyarrow as pa  # imported here: only Parquet needs it
            import pyarrow.parquet as pq

            try:
                meta = pq.read_metadata(path)
                size = max(size, sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)))
            except (OSError, pa.ArrowException):
                pass
    else:
        size = 0
        try:
            with open_decompressed(path) as fh:
                while size <= limit and (chunk := fh.read(_CHUNK)):
                    size += len(chunk)
        except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
            raise DataError(f"{path.name}: not a valid {path.suffix} file ({exc})") from None
    if size > limit:
        raise DecompressedTooLarge(f"{path.name}: the data is larger than {limit} bytes once decompressed")
    return size


def ingest(req: IngestRequest) -> dict[str, Any]:
    """Check the size, parse with the options a job will use, check trainability; the row's counts."""
    path = Path(req.path)
    decompressed_size(path, req.fmt, req.max_decompressed_bytes)
    inter = load_interactions(
        path, user_col=req.user_col, item_col=req.item_col, rating_col=req.rating_col,
        timestamp_col=req.timestamp_col, fmt=req.fmt, sep=req.sep, rating_threshold=req.rating_threshold,
    )
    check_trainable(inter)
    n = len(inter)
    return {
        "n_users": inter.n_users, "n_items": inter.n_items, "n_interactions": n,
        "density": n / float(inter.n_users * inter.n_items),
    }


def _refusal(status: int, code: str, detail: str) -> dict[str, Any]:
    return {"ok": False, "status": status, "code": code, "detail": detail}


def run(req: IngestRequest) -> dict[str, Any]:
    """:func:`ingest` with every refusal turned into ``{ok: false, status, code, detail}``."""
    try:
        return {"ok": True, **ingest(req)}
    except DecompressedTooLarge as exc:
        return _refusal(413, "decompressed_too_large", str(exc))
    except UntrainableData as exc:
        return _refusal(422, "untrainable_data", str(exc))
    except DataError as exc:
        return _refusal(422, "invalid_data", str(exc))
    except MemoryError:
        return _refusal(413, "ingest_memory", "parsing the file needs more memory than allowed")
    except ValueError as exc:  # pandas' own complaints about a file it cannot read
        return _refusal(422, "invalid_data", f"{Path(req.path).name}: unparsable file: {exc}")


def main() -> int:
    req = IngestRequest(**json.loads(sys.stdin.read()))
    # The parent kills a child past the limit; this alarm (default action: exit) also ends one whose parent
    # was killed first and can no longer watch it.
    signal.alarm(math.ceil(req.timeout_s) + 5)
    out = run(req)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


# --- leftovers of a crash -------------------------------------------------------------------------------


OWNER_FILE = ".owner"  # "<host> <pid>" of the API process that is uploading into the folder


def write_owner(folder: Path) -> None:
    """Mark ``folder`` as being filled by this process, so a sweep after its crash need not wait for an age."""
    (folder / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}")


def release_owner(folder: Path) -> None:
    """The folder now belongs to a data set row: no process owns it any more (a marker left behind is
    harmless, a folder with a row is never swept, so a failure here is not an error of the upload)."""
    with contextlib.suppress(OSError):
        (folder / OWNER_FILE).unlink(missing_ok=True)


def _owner_is_dead(folder: Path) -> bool:
    """True when the folder's owner ran on this host and that pid is gone (a reused pid counts as alive)."""
    try:
        host, pid = (folder / OWNER_FILE).read_text().split()
        if host != socket.gethostname():
            return False
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError):  # no or unreadable marker, or a pid we may not signal: unknown
        return False
    return False


def _newest_mtime(folder: Path) -> float:
    times = [folder.stat().st_mtime]
    for p in folder.iterdir():
        try:
            times.append(p.stat().st_mtime)
        except FileNotFoundError:  # removed meanwhile
            continue
    return max(times)


def sweep_upload_leftovers(
    artifact_dir: Path, sessions: sessionmaker[Session], min_age_s: float, now: float | None = None
) -> list[str]:
    """Remove ``datasets/<id>`` folders that have no row and whose upload is over; their ids.

    Such folders are what a crash mid-upload (``upload.part``) or mid-parse leaves. Another API process
    may be uploading into a folder right now, so a folder goes only when the process that made it (its
    ``.owner``) ran on this host and is gone, or when it was untouched for ``min_age_s``.
    """
    root = artifact_dir / "datasets"
    if not root.is_dir():
        return []
    now = time.time() if now is None else now
    old = []
    for folder in root.iterdir():
        try:
            if folder.is_dir() and _ID_RE.fullmatch(folder.name) and (
                _owner_is_dead(folder) or now - _newest_mtime(folder) >= min_age_s
            ):
                old.append(folder)
        except FileNotFoundError:
            continue
    if not old:
        return []
    with sessions() as session:
        known = repo.existing_dataset_ids(session, [f.name for f in old])
    removed = []
    for folder in old:
        if folder.name not in known:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    if removed:
        logger.warning("removed %d upload leftover folder(s) without a dataset row: %s", len(removed), removed)
    return removed


if __name__ == "__main__":
    sys.exit(main())
