"""What every phase of a running job shares: its ids and settings, the cancel/ownership state kept by the
heartbeat, the job's errors, and ``record_model`` (artifacts saved, model row created, job row updated)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import JobPhase, ModelRole, ModelSpec
from core.db import repo
from core.db.session import session_scope
from core.settings import Settings
from core.storage import ArtifactStore

_NAMESPACE = uuid.UUID("6f1c8f52-4a0b-4e77-9a51-3d1b2f0c9e11")
# Share of the overall progress bar per phase (the teacher's share goes to distill when it is reused).
_WEIGHTS = {JobPhase.TEACHER: 0.45, JobPhase.DISTILL: 0.45, JobPhase.EVALUATE: 0.05, JobPhase.INDEX: 0.05}


class JobLost(RuntimeError):
    """Another worker took the job over (our lease lapsed) or it left the running state: stop quietly."""


class JobInterrupted(RuntimeError):
    """The worker is shutting down: the job goes back to the queue and resumes from its last epoch."""


_shutdown = threading.Event()


def request_shutdown() -> None:
    """Ask the running job (if any) to stop at its next cancel check; called on a worker's warm shutdown."""
    _shutdown.set()


def shutting_down() -> bool:
    return _shutdown.is_set()


def derived_model_id(job_id: str, role: str) -> str:
    """The id of a job's teacher/student model, fixed per job so a re-run overwrites, never duplicates."""
    return uuid.uuid5(_NAMESPACE, f"{job_id}:{role}").hex


@dataclass
class JobContext:
    """What every phase needs: ids, settings, and the cancel/ownership state kept by the heartbeat."""

    job_id: str
    worker_id: str
    settings: Settings
    store: ArtifactStore
    phases: list[JobPhase] = field(default_factory=list)
    lost: threading.Event = field(default_factory=threading.Event)
    cancel: threading.Event = field(default_factory=threading.Event)
    _last_check: float = 0.0

    def write(self, **values: Any) -> None:
        """Update our job row; raises JobLost if the job is no longer ours."""
        with session_scope(self.settings.database_url) as s:
            if not repo.update_owned_job(s, self.job_id, self.worker_id, **values):
                self.lost.set()
        if self.lost.is_set():
            raise JobLost(f"job {self.job_id} is no longer owned by {self.worker_id}")

    def should_cancel(self, force: bool = False) -> bool:
        """True once the API asked to cancel; raises JobLost when the job was taken over.

        Mid-epoch polls (every few batches) read the database at most once a second; ``force`` (after every
        epoch) always reads it, so a cancel lands within one epoch.
        """
        if self.lost.is_set():
            raise JobLost(f"job {self.job_id} is no longer owned by {self.worker_id}")
        if shutting_down():
            raise JobInterrupted(f"worker {self.worker_id} is shutting down")
        now = time.monotonic()
        if not self.cancel.is_set() and (force or now - self._last_check >= 1.0):
            self._last_check = now
            with session_scope(self.settings.database_url) as s:
                if repo.get_job(s, self.job_id).cancel_requested:
                    self.cancel.set()
        return self.cancel.is_set()

    def progress(self, phase: JobPhase, fraction: float) -> float:
        """Overall progress in [0, 1] when ``phase`` is ``fraction`` done."""
        total = sum(_WEIGHTS[p] for p in self.phases)
        done = sum(_WEIGHTS[p] for p in self.phases[: self.phases.index(phase)])
        return min(1.0, (done + _WEIGHTS[phase] * fraction) / total)


def record_model(
    ctx: JobContext,
    role: ModelRole,
    spec: ModelSpec,
    save: Callable[[Path, str], int],
    *,
    dim: int,
    n_params: int,
    id_field: str,
    job_update: dict[str, Any],
    lost_while: str,
    **columns: Any,
) -> str:
    """Save a job's teacher or student and record it: ``save(folder, model_id)`` writes the artifacts and
    returns the weight file's size; the model row is created once (a re-delivered job finds its own) and the
    job row gets ``job_update`` and the model id in ``id_field`` in the same transaction. Returns the model id; JobLost when the job is no
    longer ours (``lost_while`` says what it was doing)."""
    model_id = derived_model_id(ctx.job_id, role)
    folder = ctx.store.model_dir(model_id)
    size = save(folder, model_id)
    with session_scope(ctx.settings.database_url) as s:
        if not repo.model_exists(s, model_id):
            repo.create_model(
                s,
                id=model_id,
                job_id=ctx.job_id,
                role=role,
                model_name=spec.model,
                dim=dim,
                artifact_path=ctx.store.relative(folder),
                n_params=n_params,
                size_bytes=size,
                **columns,
            )
        if not repo.update_owned_job(s, ctx.job_id, ctx.worker_id, **job_update, **{id_field: model_id}):
            raise JobLost(f"job {ctx.job_id} was taken over while {lost_while}")
    return model_id
