"""Helpers for the API tests: settings on a tmp home, a recording queue, model rows with real bundles."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from fastapi import FastAPI
from safetensors.numpy import save_file
from sqlalchemy.orm import Session, sessionmaker

from api.main import create_app
from core.db.models import Base
from core.index import write_bundle
from core.settings import Settings
from tests.factories import dataset_row, job_row, model_row

API_KEY = "test-key-123"


@dataclass
class RecordingQueue:
    """Stands in for ``enqueue_job``: remembers ids, or raises ``error`` when set."""

    sent: list[str] = field(default_factory=list)
    error: Exception | None = None

    def __call__(self, job_id: str) -> str:
        if self.error is not None:
            raise self.error
        self.sent.append(job_id)
        return f"task-{job_id}"


def make_settings(home: Path, **overrides: Any) -> Settings:
    """Settings for a tmp home; keyword names are field names, passed by their environment aliases."""
    values: dict[str, Any] = {
        "home": home,
        "api_key": API_KEY,
        "open_serving": False,
        "max_upload_mb": 1,
        "max_k": 100,
        "database_url": "",
        "celery_broker_url": "",
        "artifact_dir": "",
    }
    values.update(overrides)
    aliased = {str(Settings.model_fields[k].validation_alias or k): v for k, v in values.items()}
    return Settings(**aliased)


def add_dataset(sessions: sessionmaker[Session], **fields: Any) -> str:
    with sessions() as s:
        row = dataset_row(s, **fields)
        s.commit()
        return row.id


def add_model(
    sessions: sessionmaker[Session],
    settings: Settings,
    *,
    dataset_id: str | None = None,
    role: str = "student",
    job_status: str = "succeeded",
    n_users: int = 40,
    n_items: int = 60,
    dim: int = 8,
    seed: int = 0,
    with_bundle: bool = True,
    index: str = "auto",
) -> str:
    """A job + model row and, for students, a real serving bundle from random embeddings (no torch), its
    FAISS index of kind ``index``."""
    dataset_id = dataset_id or add_dataset(sessions)
    with sessions() as s:
        job = job_row(
            s,
            dataset_id,
            status=job_status,
            teacher={"model": "bpr", "dim": dim * 4},
            student={"model": "bpr", "dim": dim},
        )
        model = model_row(
            s,
            dataset_id,
            job.id,
            role=role,
            dim=dim,
            artifact_path="",
            n_params=(n_users + n_items) * dim,
            size_bytes=(n_users + n_items) * dim * 4,
            teacher_metrics={"ndcg@10": 0.12},
            compression_ratio=4.0,
        )
        model.artifact_path = f"models/{model.id}"
        s.commit()
        model_id = model.id
    folder = settings.artifact_dir / "models" / model_id
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    user_emb = rng.standard_normal((n_users, dim)).astype(np.float32)
    item_emb = rng.standard_normal((n_items, dim)).astype(np.float32)
    save_file({"user_emb": user_emb, "item_emb": item_emb}, str(folder / "model.safetensors"))
    (folder / "manifest.json").write_text(json.dumps({"model": "bpr", "dim": dim}))
    if with_bundle:
        seen = sp.random(n_users, n_items, density=0.1, random_state=seed, format="csr", dtype=np.float32)
        seen.data[:] = 1
        pop = np.argsort(-np.asarray(seen.sum(axis=0)).ravel(), kind="stable")
        write_bundle(
            folder / "serving",
            user_emb,
            item_emb,
            [f"u{i}" for i in range(n_users)],
            [f"i{j}" for j in range(n_items)],
            seen,
            pop,
            model_id,
            index=index,  # type: ignore[arg-type]
        )
    return model_id


def job_body(dataset_id: str, **over: Any) -> dict[str, Any]:
    """A valid POST /jobs body (tiny DCD job); keyword arguments replace its fields."""
    body: dict[str, Any] = {
        "dataset_id": dataset_id,
        "teacher": {"model": "bpr", "dim": 64},
        "student": {"model": "bpr", "dim": 8},
        "method": "dcd",
        "hyperparameters": {"epochs": 3, "lr": 0.01},
        "seed": 7,
    }
    body.update(over)
    return body


def count_rows(sessions: sessionmaker[Session], table: type[Base]) -> int:
    with sessions() as s:
        return s.query(table).count()


def build_app(settings: Settings, queue: RecordingQueue, poll_interval_s: float = 1.0) -> FastAPI:
    app = create_app(settings, poll_interval_s=poll_interval_s)
    app.state.enqueue = queue
    return app
