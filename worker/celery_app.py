"""The Celery app (no torch import) and ``enqueue_job``, the one way the API queues work.

Embedded mode uses kombu's SQLAlchemy transport on a SQLite file; distributed mode uses Redis.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery
from celery.signals import worker_init

from core.settings import Settings, get_settings, sqlite_path

log = logging.getLogger(__name__)

TASK_NAME = "recdistill.run_job"
QUEUE = "recdistill"

_apps: dict[str, Celery] = {}
_lock = threading.Lock()


def make_celery(settings: Settings) -> Celery:
    """A Celery app for ``settings``: late acks, prefetch 1, requeue on worker loss, no result backend."""
    app = Celery("recdistill", broker=settings.celery_broker_url, include=["worker.tasks", "worker.sweeper"])
    transport_options: dict[str, object] = {}
    if not settings.embedded_broker:
        # Redis redelivers an unacknowledged message after this long: keep it above the longest job.
        # (The SQLAlchemy transport hands its options to create_engine and has no such timeout;
        # there the database sweeper re-enqueues jobs whose worker vanished.)
        transport_options["visibility_timeout"] = settings.visibility_timeout_s
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        task_ignore_result=True,
        task_default_queue=QUEUE,
        task_routes={TASK_NAME: {"queue": QUEUE}},
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        enable_utc=True,
    )
    return app


def ensure_broker_dir(settings: Settings) -> None:
    """Create the folder of an embedded (SQLite) queue file; kombu creates the file and its tables."""
    path = sqlite_path(settings.celery_broker_url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


def get_celery_app(settings: Settings | None = None) -> Celery:
    """The app for ``settings`` (default: current settings), one per broker URL."""
    settings = settings or get_settings()
    with _lock:
        app = _apps.get(settings.celery_broker_url)
        if app is None:
            app = _apps[settings.celery_broker_url] = make_celery(settings)
        return app


def enqueue_job(job_id: str, settings: Settings | None = None) -> str:
    """Queue ``recdistill.run_job(job_id)``; returns the Celery task id. Broker errors propagate."""
    settings = settings or get_settings()
    ensure_broker_dir(settings)
    app = get_celery_app(settings)
    result = app.send_task(
        TASK_NAME,
        args=[job_id],
        queue=QUEUE,
        retry=True,
        retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2},
    )
    log.info("enqueued job %s as task %s", job_id, result.id)
    return str(result.id)


@worker_init.connect
def _tie_to_parent(**_: object) -> None:
    """A local worker started by ``recdistill serve`` exits when the server dies (``worker.lifeline``)."""
    from worker.lifeline import watch_parent

    watch_parent()


# The module-level app that `celery -A worker.celery_app worker` and `recdistill worker` start.
celery_app = get_celery_app()
