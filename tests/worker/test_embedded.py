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



def test_sweep_fails_a_job_at_its_last_allowed_crash_and_drops_its_training_state(
    embedded: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.storage import ArtifactStore

    sent: list[str] = []
    monkeypatch.setattr(sweeper, "enqueue_job", lambda job_id, settings: sent.append(job_id))
    settings = embedded.model_copy(update={"job_max_crashes": 2})
    job = create_job(settings)
    store = ArtifactStore(settings.artifact_dir)
    store.checkpoint_dir(job, "distill").mkdir(parents=True)
    for expected in ("queued", "failed"):  # the first crash re-queues it, the second (the cap) fails it
        with session_scope(settings.database_url) as s:
            assert repo.claim_job(s, job, "doomed-worker", settings.job_lease_s, settings.job_max_crashes)
            s.execute(update(Job).where(Job.id == job).values(heartbeat_at=utcnow() - timedelta(seconds=600)))
        sweeper.sweep(settings)
        with session_scope(settings.database_url) as s:
            assert repo.get_job(s, job).status == expected
    assert sent == [job]  # enqueued once, after the first crash only
    with session_scope(settings.database_url) as s:
        row = repo.get_job(s, job)
        assert (row.crashes, row.worker_id) == (2, None) and "2 times" in (row.error or "")
    assert not store.job_dir(job).exists()

def test_sweep_removes_leftovers_of_crashed_jobs(embedded: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import time

    from core.storage import ArtifactStore

    monkeypatch.setattr(sweeper, "enqueue_job", lambda job_id, settings: None)
    store = ArtifactStore(embedded.artifact_dir)
    live, done = create_job(embedded), create_job(embedded)
    with session_scope(embedded.database_url) as s:
        assert repo.claim_job(s, live, "w", 3600)
        s.execute(update(Job).where(Job.id == done).values(status="cancelled"))
    gone = "e" * 32  # training state of a job with no row
    for job_id in (live, done, gone):
        store.checkpoint_dir(job_id, "distill").mkdir(parents=True)
    model = store.model_dir("a" * 32)
    old_staging = model.parent / f".{model.name}.x1y2.staging"
    old_tmp = store.checkpoint_dir(live, "distill") / ".train_state.safetensors.abc.tmp"
    old_bundle = model / f".serving.tmp-{'b' * 32}"
    fresh_staging = model.parent / f".{'c' * 32}.z9.staging"
    for path in (old_staging, old_bundle, fresh_staging):
        path.mkdir(parents=True)
    old_tmp.write_bytes(b"half a checkpoint")
    (model / "model.safetensors").write_bytes(b"kept")
    past = time.time() - 2 * embedded.job_lease_s
    for path in (old_staging, old_tmp, old_bundle):
        os.utime(path, (past, past))
    sweeper.sweep(embedded)
    assert store.job_state_ids() == [live]
    assert not old_staging.exists() and not old_tmp.exists() and not old_bundle.exists()
    assert fresh_staging.exists(), "a leftover still being written (fresh) must stay"
    assert (model / "model.safetensors").read_bytes() == b"kept"
