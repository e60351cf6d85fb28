"""The one test factory for tiny data sets and rows: interaction files with a known structure, and dataset /
job / model rows (a dataset with or without a file behind it) made through ``core.db.repo``.

Each ``*_row`` takes complete defaults; a test overrides only the fields it reads.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from core.db import repo
from core.db.migrate import upgrade_head
from core.db.models import Dataset, Job, Model
from core.db.session import session_scope
from core.settings import Settings
from core.storage import ArtifactStore

#: A dataset row with no file behind it (the row alone is what the test reads).
DATASET_ROW: dict[str, Any] = {
    "name": "tiny",
    "original_filename": "tiny.csv",
    "path": "datasets/x/data.csv",
    "format": "csv",
    "user_col": "user_id",
    "item_col": "item_id",
    "rating_col": None,
    "timestamp_col": None,
    "rating_threshold": None,
    "n_users": 3,
    "n_items": 3,
    "n_interactions": 4,
    "density": 0.44,
    "size_bytes": 10,
}
#: What a dataset row with a file changes: the file's name and columns; counts unknown (0): jobs read the file.
FILE_DATASET_ROW: dict[str, Any] = {
    "name": "toy",
    "original_filename": "toy.csv",
    "user_col": "user",
    "item_col": "item",
    "n_users": 0,
    "n_items": 0,
    "n_interactions": 0,
    "density": 0.0,
    "size_bytes": 0,
}
JOB_ROW: dict[str, Any] = {
    "method": "dcd",
    "teacher": {"model": "bpr", "dim": 8},
    "student": {"model": "bpr", "dim": 4},
}
MODEL_ROW: dict[str, Any] = {
    "role": "student",
    "model_name": "bpr",
    "dim": 4,
    "method": "dcd",
    "artifact_path": "models/x",
    "n_params": 28,
    "size_bytes": 112,
    "metrics": {"ndcg@10": 0.1},
}


def free_port() -> int:
    """A loopback port nothing listens on now (the OS's pick), for a server a test starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def two_taste_csv(
    n_users: int = 40, n_items: int = 30, per_user: int = 10, seed: int = 0, ratings: bool = False
) -> str:
    """Two taste groups: even users like the first half of the catalogue, odd users the second; ``user,item``
    (``,rating`` in 3..5 when ``ratings``) CSV text."""
    rng = np.random.default_rng(seed)
    rows = ["user,item,rating" if ratings else "user,item"]
    for u in range(n_users):
        half = np.arange(n_items // 2) + (0 if u % 2 == 0 else n_items // 2)
        for i in rng.choice(half, size=per_user, replace=False):
            rows.append(f"u{u},i{i},{rng.integers(3, 6)}" if ratings else f"u{u},i{i}")
    return "\n".join(rows) + "\n"


def write_interactions(path: Path, n_users: int, n_items: int, per_user: int, seed: int = 0) -> None:
    """``two_taste_csv`` (no ratings) written to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(two_taste_csv(n_users, n_items, per_user, seed))


def dataset_row(session: Session, **fields: Any) -> Dataset:
    return repo.create_dataset(session, **{**DATASET_ROW, **fields})


def file_dataset_row(session: Session, store: ArtifactStore, content: str, **fields: Any) -> Dataset:
    """A dataset row whose file (``content``) exists where its ``path`` points."""
    row = dataset_row(session, **{**FILE_DATASET_ROW, "path": "pending", **fields})
    file = store.dataset_file(row.id, row.original_filename)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(content)
    row.path = store.relative(file)
    return row


def job_row(session: Session, dataset_id: str | None, **fields: Any) -> Job:
    return repo.create_job(session, dataset_id=dataset_id, **{**JOB_ROW, **fields})


def model_row(session: Session, dataset_id: str, job_id: str | None = None, **fields: Any) -> Model:
    return repo.create_model(session, job_id=job_id, dataset_id=dataset_id, **{**MODEL_ROW, **fields})


def job_settings(tmp_path: Path, **env: Any) -> Settings:
    """Settings of a fresh embedded home under ``tmp_path`` (CPU, fast heartbeat), its folders made and its
    database migrated; ``env`` adds or overrides settings. Call ``dispose_engines()`` when done."""
    s = Settings(**{"RECDISTILL_HOME": str(tmp_path), "RECDISTILL_DEVICE": "cpu", "RECDISTILL_HEARTBEAT": 0.2, **env})
    s.ensure_dirs()
    upgrade_head(s.database_url)
    return s


def tiny_job(
    settings: Settings, content: str | None = None, dataset: dict[str, Any] | None = None, **job: Any
) -> str:
    """A queued job on a dataset with its file (``content``, default ``two_taste_csv()``), committed; its id."""
    store = ArtifactStore(settings.artifact_dir)
    with session_scope(settings.database_url) as s:
        ds = file_dataset_row(s, store, two_taste_csv() if content is None else content, **(dataset or {}))
        return job_row(s, ds.id, **{"seed": 0, **job}).id


def write_v1_bundle(folder: Path, arrays: dict) -> Path:
    """A bundle as version 1 wrote it (arrays + JSON id lists, no index), as found in existing artifact folders."""
    import json

    import scipy.sparse as sp

    folder.mkdir(parents=True)
    np.save(folder / "user_emb.npy", arrays["user_emb"])
    np.save(folder / "item_emb.npy", arrays["item_emb"])
    np.save(folder / "popularity.npy", arrays["popularity"])
    sp.save_npz(folder / "seen.npz", sp.csr_matrix(arrays["seen"]), compressed=True)
    (folder / "user_ids.json").write_text(json.dumps(arrays["user_ids"]))
    (folder / "item_ids.json").write_text(json.dumps(arrays["item_ids"]))
    n_users, dim = arrays["user_emb"].shape
    meta = {"version": 1, "model_id": arrays["model_id"], "dim": dim, "n_users": n_users,
            "n_items": len(arrays["item_ids"])}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder
