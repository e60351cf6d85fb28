"""A job's lifecycle: claim it, keep its lease by a heartbeat, run its phases, finish it (or hand it back).

The database row is the source of truth. A job is claimed atomically and kept by a heartbeat; progress,
history and a checkpoint are written every epoch, so a re-delivered job resumes from its last epoch.
Torch is imported only when a job actually runs (``core.jobs.phases``), never at import time.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, OperationalError

from core.config import FINAL_STATUSES, JobStatus
from core.db import repo
from core.db.models import utcnow
from core.db.session import session_scope
from core.jobs.context import JobContext, JobInterrupted, JobLost, shutting_down
from core.settings import Settings, get_settings
from core.storage import ArtifactStore

log = logging.getLogger(__name__)

# Worth retrying: the database or the broker is unreachable for a moment.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    RedisConnectionError,
    RedisTimeoutError,
    BrokerError,
    ConnectionError,
    TimeoutError,
)


def worker_id_for(pid: int) -> str:
    """The id a worker process with ``pid`` on this machine writes into the rows of the jobs it holds."""
    return f"{socket.gethostname()}:{pid}"


def default_worker_id() -> str:
    return worker_id_for(os.getpid())


def discard_train_state(settings: Settings, job_ids: list[str]) -> None:
    """Remove the training state (checkpoints) of jobs that reached a final status: never resumed again."""
    store = ArtifactStore(settings.artifact_dir)
    for job_id in job_ids:
        store.remove(store.job_dir(job_id))


def recover(
    settings: Settings,
    *,
    lease_s: float | None = None,
    worker_ids: list[str] | None = None,
    include_queued: bool = False,
    crashed: bool = True,
) -> repo.Recovery:
    """``repo.recover_jobs`` in its own transaction, then drop the training state of the jobs it ended.

    ``crashed``: the runs ended with their worker gone (a lapsed lease, a dead process), so each counts
    towards ``job_max_crashes``; False for a worker handing its own job back. The caller enqueues
    ``to_enqueue`` (this module knows no broker). Database errors propagate.
    """
    with session_scope(settings.database_url) as s:
        rec = repo.recover_jobs(
            s,
            lease_s=lease_s,
            worker_ids=worker_ids or [],
            include_queued=include_queued,
            max_crashes=settings.job_max_crashes if crashed else None,
        )
    if rec.requeued or rec.cancelled:
        log.info("recovered jobs: requeued %s, cancelled %s", rec.requeued, rec.cancelled)
    if rec.failed:
        log.warning("jobs failed after %d crashed runs: %s", settings.job_max_crashes, rec.failed)
    discard_train_state(settings, rec.cancelled + rec.failed)
    return rec


class _Heartbeat(threading.Thread):
    """Refreshes the job's lease every ``heartbeat_s``; flags ``ctx.lost`` when the job stops being ours."""

    def __init__(self, ctx: JobContext) -> None:
        super().__init__(name=f"heartbeat-{ctx.job_id[:8]}", daemon=True)
        self.ctx = ctx
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.ctx.settings.heartbeat_s):
            try:
                with session_scope(self.ctx.settings.database_url) as s:
                    if not repo.heartbeat(s, self.ctx.job_id, self.ctx.worker_id):
                        self.ctx.lost.set()
                        return
            except TRANSIENT_ERRORS as exc:  # keep trying; the lease covers short outages
                log.warning("heartbeat of job %s failed: %s", self.ctx.job_id, exc)


def run_job(job_id: str, settings: Settings | None = None, worker_id: str | None = None) -> str:
    """Run job ``job_id`` to a final state; returns the status it ended in, or why nothing ran.

    Returns the job's status if it was already final (idempotent), "busy" when another worker holds it,
    "lost" when it was taken over mid-run, "interrupted" when the worker is shutting down (the job is back
    in the queued state; the caller re-enqueues it). Transient errors are re-raised (the task retries them).
    """
    settings = settings or get_settings()
    worker_id = worker_id or default_worker_id()
    with session_scope(settings.database_url) as s:
        try:
            job = repo.get_job(s, job_id)
        except repo.NotFoundError:
            log.error("job %s does not exist; dropping the message", job_id)
            return "missing"
        if job.status in FINAL_STATUSES:
            log.info("job %s is already %s; nothing to do", job_id, job.status)
            return job.status
        if shutting_down():  # a message taken during a warm shutdown: leave the job to the next worker
            return "interrupted"
        claimed = repo.claim_job(s, job_id, worker_id, settings.job_lease_s, settings.job_max_crashes)
        # A cancel that its worker never acted on (it crashed, or handed the job back) is honoured here.
        cancelled = not claimed and repo.cancel_abandoned(s, job_id, settings.job_lease_s)
    if cancelled:
        log.info("job %s: cancel requested while no worker ran it; cancelled", job_id)
        discard_train_state(settings, [job_id])
        return JobStatus.CANCELLED
    if not claimed:
        log.info("job %s is held by another worker; not running it twice", job_id)
        return "busy"
    ctx = JobContext(job_id, worker_id, settings, ArtifactStore(settings.artifact_dir))
    beat = _Heartbeat(ctx)
    beat.start()
    try:
        from core.jobs import phases  # torch enters the process here, inside the task

        phases.execute(ctx)
        return JobStatus.SUCCEEDED
    except JobLost:
        log.warning("job %s was taken over by another worker; stopping", job_id)
        return "lost"
    except JobInterrupted:
        log.info("job %s interrupted by a worker shutdown; handing it back to the queue", job_id)
        return JobStatus.CANCELLED if _release(ctx) == JobStatus.CANCELLED else "interrupted"
    except TRANSIENT_ERRORS:
        _release(ctx)
        raise
    except Exception as exc:
        return _finish_with_error(ctx, exc)
    finally:
        beat.stopped.set()
        beat.join(timeout=5)


def _finish_with_error(ctx: JobContext, exc: Exception) -> str:
    from core.train import TrainingCancelled

    if isinstance(exc, TrainingCancelled) or ctx.cancel.is_set():
        status, message = JobStatus.CANCELLED, None
        log.info("job %s cancelled", ctx.job_id)
    else:
        status, message = JobStatus.FAILED, _message(exc)
        log.warning("job %s failed: %s", ctx.job_id, message, exc_info=not _expected(exc))
    try:
        ctx.write(status=status, error=message, finished_at=utcnow())
    except JobLost:
        return "lost"
    ctx.store.remove(ctx.store.job_dir(ctx.job_id))  # a final job is never resumed: drop its train state
    return status


def _expected(exc: Exception) -> bool:
    """Errors whose message is the whole story (bad data, bad options, diverged training)."""
    from core.data import DataError
    from core.train import NonFiniteLossError

    return isinstance(exc, (DataError, NonFiniteLossError, ValueError, repo.NotFoundError, FileNotFoundError))


def _message(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if _expected(exc) else f"internal error ({type(exc).__name__}): {text}"


def _release(ctx: JobContext) -> str | None:
    """Hand a job back to the queue (a transient error, or the worker is shutting down) so the next delivery
    can claim it at once; a job with a pending cancel ends ``cancelled`` instead. Returns the new status, or
    None when the job was no longer ours (or the database is still down: the lease lapses, the sweeper acts)."""
    try:
        rec = recover(ctx.settings, worker_ids=[ctx.worker_id], crashed=False)  # our own hand-back
    except (DBAPIError, *TRANSIENT_ERRORS) as exc:
        log.warning("could not release job %s: %s", ctx.job_id, exc)
        return None
    if ctx.job_id in rec.cancelled:
        return JobStatus.CANCELLED
    return JobStatus.QUEUED if ctx.job_id in rec.requeued else None
