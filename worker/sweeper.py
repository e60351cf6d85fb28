"""Recovery inside every worker: re-enqueue jobs whose worker vanished (stale heartbeat) and, at start-up,
jobs still queued (their message may be lost, e.g. taken by a worker killed with ``kill -9``); end as
cancelled the jobs whose cancel no worker is left to honour; remove leftovers of interrupted writes.

This, not the broker's redelivery, is how a dead worker's job comes back (see ``visibility_timeout_s``):
within one lease plus one sweep interval of its last heartbeat. Claims are atomic, so a duplicate message is
a no-op; the sweep only bounds how long a job waits.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from core.db import repo
from core.db.session import session_scope
from core.jobs.context import request_shutdown
from core.jobs.lifecycle import TRANSIENT_ERRORS, discard_train_state, recover
from core.settings import Settings, get_settings
from core.storage import ArtifactStore
from worker.celery_app import enqueue_job

log = logging.getLogger(__name__)


def sweep(settings: Settings, include_queued: bool = False) -> list[str]:
    """Move stale running jobs back to queued and enqueue them (and queued ones, when asked); returns the
    enqueued ids. Stale or queued jobs with a pending cancel end cancelled, and a stale job that has now
    crashed ``job_max_crashes`` workers ends failed, their training state removed."""
    rec = recover(settings, lease_s=settings.job_lease_s, include_queued=include_queued)
    ids = rec.to_enqueue
    for job_id in ids:
        enqueue_job(job_id, settings)
    if ids:
        log.info("re-enqueued %d job(s): %s", len(ids), ", ".join(ids))
    clean_leftovers(settings)
    return ids


def clean_leftovers(settings: Settings) -> None:
    """Drop what crashes leave in the artifact store: training state of jobs that are final (or gone), and
    temporary/staging files untouched for a lease (a live writer holds a job whose lease it keeps fresh)."""
    store = ArtifactStore(settings.artifact_dir)
    on_disk = store.job_state_ids()
    if on_disk:
        with session_scope(settings.database_url) as s:
            finished = sorted(repo.final_job_ids(s, on_disk))
        if finished:
            log.info("removing training state of finished jobs: %s", ", ".join(finished))
            discard_train_state(settings, finished)
    store.remove_leftovers(settings.job_lease_s)


class Sweeper(threading.Thread):
    """Sweeps at start-up (queued jobs included) and then every ``sweep_interval_s``."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="recdistill-sweeper", daemon=True)
        self.settings = settings
        self.stopped = threading.Event()

    def run(self) -> None:
        first = True
        period = self.settings.sweep_interval_s
        while not self.stopped.is_set():
            try:
                sweep(self.settings, include_queued=first)
                first = False
            except TRANSIENT_ERRORS as exc:
                log.warning("sweep failed (will retry): %s", exc)
            except Exception:  # never let recovery kill the worker
                log.exception("sweep failed")
            self.stopped.wait(period)


_sweeper: Sweeper | None = None


@worker_ready.connect
def _start_sweeper(**_: Any) -> None:
    global _sweeper
    if _sweeper is None:
        _sweeper = Sweeper(get_settings())
        _sweeper.start()


@worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    if _sweeper is not None:
        _sweeper.stopped.set()


@worker_shutting_down.connect
def _interrupt_running_job(**_: Any) -> None:
    # Warm shutdown: with the solo pool the job runs in this process; it stops at its next cancel check,
    # goes back to queued and is sent again, instead of holding the shutdown until it ends.
    request_shutdown()
    _stop_sweeper()
