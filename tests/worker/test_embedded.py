"""Embedded mode: kombu's SQLAlchemy queue on SQLite and a local ``--pool=solo`` worker subprocess."""

from __future__ import annotations

from datetime import timedelta

import pytest
from jobkit import create_job, wait_for
from sqlalchemy import update

from core.db import repo
from core.db.models import Job, utcnow
from core.db.session import session_scope
from core.settings import Settings
from worker import sweeper
from worker.celery_app import enqueue_job
from worker.embedded import LocalWorker, worker_argv


def test_job_sent_before_the_worker_started_runs_to_success(embedded: Settings) -> None:
    job_id = create_job(embedded)
    enqueue_job(job_id, embedded)  # nothing consumes the queue yet
    assert (embedded.home / "queue.db").is_file()
    worker = LocalWorker(embedded)
    worker.start()
    try:
        job = wait_for(embedded, job_id, lambda j: j.status not in ("queued", "running"), timeout=150)
    finally:
        worker.stop()
    assert (job.status, job.error, job.attempts) == ("succeeded", None, 1)
    assert worker.proc is not None and worker.proc.returncode is not None  # stopped, nothing left behind


def test_worker_argv_runs_one_job_at_a_time(embedded: Settings) -> None:
    argv = worker_argv(embedded)
    assert "--pool=solo" in argv and "--concurrency=1" in argv and "--prefetch-multiplier=1" in argv


def test_sweep_requeues_stale_running_jobs_and_queued_ones_at_start(
    embedded: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[str] = []
    monkeypatch.setattr(sweeper, "enqueue_job", lambda job_id, settings: sent.append(job_id))
    stale, fresh, queued = create_job(embedded), create_job(embedded), create_job(embedded)
    with session_scope(embedded.database_url) as s:
        assert repo.claim_job(s, stale, "dead-worker", embedded.job_lease_s)
        assert repo.claim_job(s, fresh, "live-worker", embedded.job_lease_s)
        s.execute(update(Job).where(Job.id == stale).values(heartbeat_at=utcnow() - timedelta(seconds=60)))
    assert sweeper.sweep(embedded) == [stale]
    assert sent == [stale]
    with session_scope(embedded.database_url) as s:
        assert repo.get_job(s, stale).status == "queued"
        assert repo.get_job(s, fresh).status == "running"
    assert set(sweeper.sweep(embedded, include_queued=True)) == {stale, queued}
