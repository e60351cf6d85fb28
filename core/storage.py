"""The artifact store: folder layout (datasets/, models/, jobs/), atomic writes and safe names.

Layout under the root: ``datasets/<id>/<file>``, ``models/<id>/`` (checkpoint + ``serving/``),
``jobs/<id>/checkpoints/<phase>/``. Paths stored in the database are relative to the root.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from core.config import JobPhase

log = logging.getLogger(__name__)

_ID = re.compile(r"^[0-9a-f]{32}$")
# What an interrupted write leaves behind (atomic_path's .tmp files, staging_dir's .staging and publish_dir's
# .old- folders; .tmp- folders of bundles written before atomic_dir): always a hidden name, which safe_name
# never lets a user pick.
_LEFTOVER = re.compile(r"^\..+(\.tmp|\.tmp-[0-9a-f]+|\.old-[0-9a-f]+|\.staging)$")
# Folders whose content only jobs write (uploads under datasets/ are the API's business).
_JOB_OUTPUTS = ("models", "jobs")
# Phases that keep training state (a checkpoint to resume from).
_PHASES = (JobPhase.TEACHER, JobPhase.DISTILL)
MAX_NAME = 255


class InvalidNameError(ValueError):
    """A name or id that could escape its folder (``../../etc/passwd``) or is otherwise unusable."""


def safe_name(value: str, field: str = "name") -> str:
    """Return ``value`` if it is a plain file name; raise InvalidNameError naming ``field`` otherwise."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidNameError(f"{field} must be a non-empty name")
    if len(value) > MAX_NAME:
        raise InvalidNameError(f"{field} is longer than {MAX_NAME} characters")
    if "/" in value or "\\" in value or value in (".", "..") or ".." in value.split("."):
        raise InvalidNameError(f"{field} must be a plain name, not a path: {value!r}")
    if any(ord(c) < 32 or c == "\x7f" for c in value) or value.startswith("."):
        raise InvalidNameError(f"{field} contains control characters or starts with a dot: {value!r}")
    return value


def check_id(value: str, field: str = "id") -> str:
    """Return ``value`` if it is a 32-character lowercase hex id; raise InvalidNameError otherwise."""
    if not isinstance(value, str) or not _ID.match(value):
        raise InvalidNameError(f"{field} must be a 32-character hex id, got {value!r}")
    return value


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems refuse directory handles; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o077)  # reading the umask means setting it: put it back at once
    os.umask(mask)
    return mask


# Read once at import (before any thread): the permissions a plain open() would give a user's file.
USER_FILE_MODE = 0o666 & ~_umask()


@contextmanager
def atomic_path(path: Path, user_file: bool = False) -> Iterator[Path]:
    """A fresh temporary path beside ``path`` for the caller to write by any means (a library's save, an
    extraction); on success it is fsynced and ``os.replace``d onto ``path``, so readers see the old file or the
    whole new one. On any exception the temporary file is removed and ``path`` is left as it was.

    The file is private (0600, as ``mkstemp`` makes it: the artifact store holds users' data) unless
    ``user_file``: a file the CLI writes for its user (a result, a data set) gets what ``open`` would give it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if user_file:
            os.chmod(tmp, USER_FILE_MODE)
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(
    path: Path, mode: str = "wb", encoding: str | None = None, user_file: bool = False
) -> Iterator[IO[Any]]:
    """``open`` a temporary file beside ``path`` (``atomic_path``): replaced onto ``path`` only on success."""
    with atomic_path(path, user_file) as tmp, open(tmp, mode, encoding=encoding) as fh:
        yield fh


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str, user_file: bool = False) -> None:
    with atomic_open(path, "w", encoding="utf-8", user_file=user_file) as fh:
        fh.write(text)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def staging_dir(final: Path) -> Path:
    """A fresh hidden folder beside ``final`` to write into before ``publish_dir``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".staging", dir=final.parent))


def publish_dir(staging: Path, final: Path) -> None:
    """Move a fully written folder into place; an older ``final`` is swapped out and removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old: Path | None = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(staging, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """A staging folder to fill; on success it replaces ``final`` whole (``publish_dir``), on any exception it
    is removed and ``final`` is left as it was."""
    staging = staging_dir(final)
    try:
        yield staging
        publish_dir(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _newest_mtime(path: Path) -> float:
    """The latest modification time of ``path`` or anything under it (0 when it vanished meanwhile)."""
    try:
        times = [path.lstat().st_mtime]
        if path.is_dir():
            times.extend(p.lstat().st_mtime for p in path.rglob("*"))
    except FileNotFoundError:
        return 0.0
    return max(times)


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class ArtifactStore:
    """Paths inside one artifact root; every path handed out stays inside it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def _inside(self, path: Path) -> Path:
        path = path.resolve()
        if not path.is_relative_to(self.root):
            raise InvalidNameError(f"path {path} leaves the artifact store {self.root}")
        return path

    def dataset_dir(self, dataset_id: str) -> Path:
        return self._inside(self.root / "datasets" / check_id(dataset_id, "dataset_id"))

    def dataset_file(self, dataset_id: str, filename: str) -> Path:
        return self._inside(self.dataset_dir(dataset_id) / safe_name(filename, "filename"))

    def model_dir(self, model_id: str) -> Path:
        return self._inside(self.root / "models" / check_id(model_id, "model_id"))

    def serving_dir(self, model_id: str) -> Path:
        return self.model_dir(model_id) / "serving"

    def job_dir(self, job_id: str) -> Path:
        return self._inside(self.root / "jobs" / check_id(job_id, "job_id"))

    def checkpoint_dir(self, job_id: str, phase: str) -> Path:
        if phase not in _PHASES:
            raise InvalidNameError(f"phase must be one of {_PHASES}, got {phase!r}")
        return self.job_dir(job_id) / "checkpoints" / phase

    def relative(self, path: Path) -> str:
        """``path`` as stored in the database: relative to the root, with forward slashes."""
        return self._inside(path).relative_to(self.root).as_posix()

    def resolve(self, relative: str) -> Path:
        """The absolute path of a stored relative path; refuses anything that leaves the root."""
        if Path(relative).is_absolute():
            raise InvalidNameError(f"artifact path must be relative, got {relative!r}")
        return self._inside(self.root / relative)

    def staging_dir(self, final: Path) -> Path:
        """A fresh hidden folder beside ``final`` (inside the store) to write into before ``publish_dir``."""
        return staging_dir(self._inside(final))

    def job_state_ids(self) -> list[str]:
        """Ids of the jobs that have training state (a ``jobs/<id>`` folder) on disk."""
        folder = self.root / "jobs"
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and _ID.match(p.name))

    def remove_leftovers(self, older_than_s: float) -> list[Path]:
        """Remove temporary files and staging/swapped-out folders of interrupted writes under ``models/`` and
        ``jobs/`` that nothing touched for ``older_than_s`` seconds (a live writer keeps touching its own).
        Returns what was removed."""
        cutoff = time.time() - older_than_s
        removed: list[Path] = []
        for top in _JOB_OUTPUTS:
            base = self.root / top
            if not base.is_dir():
                continue
            for path in sorted(base.rglob(".*")):
                if not _LEFTOVER.match(path.name) or not path.exists() or _newest_mtime(path) > cutoff:
                    continue
                self.remove(path)
                removed.append(path)
        if removed:
            log.info("removed %d leftover(s) of interrupted writes: %s", len(removed), removed)
        return removed

    def remove(self, path: Path) -> None:
        """Delete a file or folder inside the store (missing is fine)."""
        path = self._inside(path)
        if path == self.root:
            raise InvalidNameError("refusing to remove the artifact root")
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
