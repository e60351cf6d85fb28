"""``recdistill serve`` in the embedded mode: SQLite queue, local solo worker; a job sent before the worker
existed runs, and a job interrupted by a server restart resumes from its last epoch."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from jobkit import Server, create_job, wait_for

from core.db import repo
from core.db.session import session_scope
from core.settings import Settings
from worker.celery_app import enqueue_job

HP = {
    "epochs": 30,  # enough that the first server is stopped mid-distill even on a fast machine
    "teacher_epochs": 2,
    "batch_size": 64,
    "patience": 0,
    "lr": 0.01,
    "m": 20,
    "p": 5,
    "rkd_k": 5,
    "rkd_l": 5,
}
FINAL = ("succeeded", "failed", "cancelled")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow  # two server and worker start-ups: about 1-2 minutes on a busy 2-core machine
def test_serve_runs_queued_jobs_and_survives_a_restart(embedded: Settings, tmp_path: Path) -> None:
    job_id = create_job(embedded, n_users=200, n_items=100, per_user=10, hyperparameters=HP)
    enqueue_job(job_id, embedded)  # sent while no worker exists
    server = Server(embedded, tmp_path / "serve1.log")
    try:
        server.wait_ready()
        wait_for(
            embedded, job_id, lambda j: (j.phase == "distill" and j.epoch >= 2) or j.status in FINAL, 150
        )
    finally:
        server.stop()
    assert not _group_alive(server.proc.pid), "serve left its worker running"
    with session_scope(embedded.database_url) as s:
        stopped = repo.get_job(s, job_id)
    # A warm shutdown hands the job back at once instead of waiting for it to end.
    assert (stopped.status, stopped.phase, stopped.worker_id) == ("queued", "distill", None), stopped.error
    assert 2 <= stopped.epoch < HP["epochs"]

    again = Server(embedded, tmp_path / "serve2.log")
    try:
        again.wait_ready()
        job = wait_for(embedded, job_id, lambda j: j.status in FINAL, 150)
    finally:
        again.stop()
    logs = (tmp_path / "serve2.log").read_text()
    assert job.status == "succeeded", (job.error, logs[-3000:])
    assert job.attempts == 2
    assert "resumed from" in logs
    assert [h["epoch"] for h in job.history if h["phase"] == "distill"] == list(range(1, HP["epochs"] + 1))
    assert [h["phase"] for h in job.history].count("teacher") == 2


@pytest.mark.slow  # two server and worker start-ups
def test_kill_9_of_serve_mid_job_hands_the_job_to_the_restarted_serve(embedded: Settings, tmp_path: Path) -> None:
    job_id = create_job(embedded, n_users=200, n_items=100, per_user=10, hyperparameters=HP)
    enqueue_job(job_id, embedded)
    server = Server(embedded, tmp_path / "serve1.log")
    again = None
    try:
        server.wait_ready()
        job = wait_for(
            embedded, job_id, lambda j: (j.phase == "distill" and j.epoch >= 2) or j.status in FINAL, 150
        )
        assert job.status == "running" and job.worker_id, job.error
        worker_pid = int(job.worker_id.rsplit(":", 1)[1])
        os.kill(server.proc.pid, signal.SIGKILL)  # serve only: its worker is not signalled by anyone else
        server.proc.wait(timeout=10)
        killed = time.monotonic()
        again = Server(embedded, tmp_path / "serve2.log")  # at once, as a supervisor would
        wait_for(embedded, job_id, lambda j: j.status == "running" and j.worker_id != job.worker_id, 60)
        back_in = time.monotonic() - killed
        assert not _pid_alive(worker_pid), "the first serve's worker outlived it"
        done = wait_for(embedded, job_id, lambda j: j.status in FINAL, 150)
    finally:
        for s in (server, again):
            if s is not None:
                s.stop()
    logs = (tmp_path / "serve1.log").read_text() + (tmp_path / "serve2.log").read_text()
    assert done.status == "succeeded", (done.error, logs[-3000:])
    assert back_in < 30, back_in
    assert done.attempts == 2
    assert [h["epoch"] for h in done.history if h["phase"] == "distill"] == list(range(1, HP["epochs"] + 1))


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
