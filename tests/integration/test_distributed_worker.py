"""Distributed mode on the machine's real Postgres and Redis with real ``recdistill worker`` processes:
a tiny DCD job to success, then ``kill -9`` of the worker mid-job and recovery from the last epoch."""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import Workers
from jobkit import create_job, wait_for

from core.db import repo
from core.db.session import session_scope
from core.settings import Settings
from worker.celery_app import enqueue_job

pytestmark = pytest.mark.integration

SLOW_HP = {
    "epochs": 12,
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


def test_worker_runs_jobs_and_a_killed_job_resumes_from_its_last_epoch(
    distributed: Settings, workers: Workers
) -> None:
    first = workers.start("w1")
    tiny = create_job(distributed)
    enqueue_job(tiny, distributed)
    try:
        job = wait_for(distributed, tiny, lambda j: j.status in FINAL, timeout=150)
    except AssertionError:
        raise AssertionError(workers.logs()) from None
    assert (job.status, job.error) == ("succeeded", None), workers.logs()
    with session_scope(distributed.database_url) as s:
        assert repo.get_model(s, job.student_model_id or "").metrics["ndcg@10"] >= 0

    # A job long enough to be killed in the middle of distillation.
    slow = create_job(distributed, n_users=200, n_items=100, per_user=10, hyperparameters=SLOW_HP)
    enqueue_job(slow, distributed)
    wait_for(distributed, slow, lambda j: (j.phase == "distill" and j.epoch >= 2) or j.status in FINAL, 150)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    with session_scope(distributed.database_url) as s:
        killed = repo.get_job(s, slow)
        killed_epoch, teacher_id = killed.epoch, killed.result_teacher_model_id
    assert killed.status == "running" and killed.phase == "distill", workers.logs()
    checkpoint = (
        distributed.artifact_dir / "jobs" / slow / "checkpoints" / "distill" / "train_state.safetensors"
    )
    assert checkpoint.is_file()
    assert 2 <= killed_epoch < SLOW_HP["epochs"]

    # Two fresh workers: the lapsed lease is noticed, the job re-queued, claimed by exactly one of them.
    workers.start("w2")
    workers.start("w3")
    seen: list[tuple[int, str | None, int]] = []
    deadline = time.monotonic() + 180
    while True:
        with session_scope(distributed.database_url) as s:
            row = repo.get_job(s, slow)
        seen.append((row.attempts, row.phase, row.epoch))
        if row.status in FINAL or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert row.status == "succeeded", (row.status, row.error, workers.logs())
    assert row.attempts == 2  # one claim by w1, one by whichever of w2/w3 won; never both
    assert row.result_teacher_model_id == teacher_id  # the teacher was not trained again
    after = [(phase, epoch) for attempts, phase, epoch in seen if attempts == 2]
    assert all(phase != "teacher" for phase, _ in after)
    assert all(epoch >= killed_epoch for phase, epoch in after if phase == "distill"), (
        killed_epoch,
        sorted(set(after), key=str),
    )
    assert [h["epoch"] for h in row.history if h["phase"] == "distill"] == list(
        range(1, SLOW_HP["epochs"] + 1)
    )
    assert [h["epoch"] for h in row.history if h["phase"] == "teacher"] == [1, 2]


def test_a_cancel_its_crashed_worker_never_saw_ends_the_job_cancelled(
    distributed: Settings, workers: Workers
) -> None:
    # Issue 10 #7: the sweeper used to put such a job back to queued, where every claim refused it for ever.
    first = workers.start("w1")
    job_id = create_job(distributed, n_users=200, n_items=100, per_user=10, hyperparameters=SLOW_HP)
    enqueue_job(job_id, distributed)
    wait_for(distributed, job_id, lambda j: (j.phase == "distill" and j.epoch >= 1) or j.status in FINAL, 150)
    os.kill(first.pid, signal.SIGKILL)  # dies before it can see the cancel below
    first.wait(timeout=10)
    with session_scope(distributed.database_url) as s:
        assert repo.request_cancel(s, job_id).status == "running"
    state = distributed.artifact_dir / "jobs" / job_id
    assert state.is_dir()
    workers.start("w2")  # its sweeper finds the lapsed lease (3 s here) and honours the cancel
    job = wait_for(distributed, job_id, lambda j: j.status in FINAL, timeout=60)
    assert (job.status, job.student_model_id) == ("cancelled", None), workers.logs()
    assert job.attempts == 1  # never run again
    assert not state.exists()
    with session_scope(distributed.database_url) as s:
        repo.delete_dataset(s, job.dataset_id or "")
