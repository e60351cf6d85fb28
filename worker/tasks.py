"""Thin Celery tasks: take a job id, call ``core.jobs.lifecycle.run_job``, retry only transient errors.

``core.jobs.lifecycle`` is torch-free at import; torch (and CUDA) is first touched inside the running task.
"""

from __future__ import annotations

import logging

from core.jobs.lifecycle import TRANSIENT_ERRORS, default_worker_id
from core.jobs.lifecycle import run_job as run_pipeline
from core.settings import get_settings
from worker.celery_app import TASK_NAME, celery_app, enqueue_job

log = logging.getLogger(__name__)


@celery_app.task(
    name=TASK_NAME,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=5,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=get_settings().task_max_retries,
)
def run_job(job_id: str) -> str:
    """Run job ``job_id`` to a final state (idempotent: a finished or busy job is left alone)."""
    outcome = run_pipeline(job_id, get_settings(), worker_id=default_worker_id())
    log.info("job %s: %s", job_id, outcome)
    if outcome == "interrupted":  # this message is acknowledged on return: send the job again
        enqueue_job(job_id)
    return outcome
