"""Celery app configuration, the thin task's retry of transient errors, and the no-torch import rule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from core.settings import Settings
from worker import tasks
from worker.celery_app import QUEUE, TASK_NAME, celery_app, make_celery

ROOT = Path(__file__).resolve().parents[2]


def test_one_job_at_a_time_with_late_acks() -> None:
    conf = celery_app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1 and conf.worker_concurrency == 1
    assert conf.broker_connection_retry_on_startup
    assert conf.task_default_queue == QUEUE


def test_visibility_timeout_only_for_redis(tmp_path: Path) -> None:
    redis_app = make_celery(
        Settings(
            RECDISTILL_HOME=str(tmp_path),
            CELERY_BROKER_URL="redis://127.0.0.1:6379/9",
            RECDISTILL_VISIBILITY_TIMEOUT=7200,
        )
    )
    assert redis_app.conf.broker_transport_options == {"visibility_timeout": 7200}
    # kombu's SQLAlchemy transport passes its options to create_engine, which would reject this key.
    sqla_app = make_celery(Settings(RECDISTILL_HOME=str(tmp_path)))
    assert sqla_app.conf.broker_url.startswith("sqla+sqlite:///")
    assert sqla_app.conf.broker_transport_options == {}


def test_importing_the_app_and_tasks_does_not_import_torch() -> None:
    code = "import sys, worker.celery_app, worker.tasks, worker.sweeper, core.jobs.lifecycle; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_task_is_registered_with_transient_retry() -> None:
    task = celery_app.tasks[TASK_NAME]
    assert task.acks_late and task.reject_on_worker_lost
    assert OperationalError in task.autoretry_for


def test_transient_error_is_retried_then_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def flaky(job_id: str, settings: Any, worker_id: str) -> str:
        calls.append(job_id)
        if len(calls) == 1:
            raise OperationalError("SELECT 1", {}, ConnectionRefusedError("down"))
        return "succeeded"

    monkeypatch.setattr(tasks, "run_pipeline", flaky)
    monkeypatch.setattr(tasks.run_job, "retry_backoff", False)
    result = tasks.run_job.apply(args=["a" * 32])
    assert result.get() == "succeeded"
    assert calls == ["a" * 32, "a" * 32]


def test_non_transient_errors_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def broken(job_id: str, settings: Any, worker_id: str) -> str:
        calls.append(job_id)
        raise RuntimeError("bug")

    monkeypatch.setattr(tasks, "run_pipeline", broken)
    result = tasks.run_job.apply(args=["b" * 32])
    with pytest.raises(RuntimeError, match="bug"):
        result.get()
    assert len(calls) == 1
