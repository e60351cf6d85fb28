"""Test helpers shared by worker and integration tests: a tiny job on synthetic data, polling its row, and a
``recdistill serve`` subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from core.db import repo
from core.db.models import Job
from core.db.session import session_scope
from core.settings import Settings
from tests.factories import free_port, tiny_job, two_taste_csv

ROOT = Path(__file__).resolve().parents[2]

TINY_HP = {
    "epochs": 2,
    "teacher_epochs": 2,
    "batch_size": 256,
    "lr": 0.01,
    "m": 10,
    "p": 3,
    "rkd_k": 3,
    "rkd_l": 3,
}


def create_job(
    settings: Settings, *, n_users: int = 40, n_items: int = 30, per_user: int = 10, **job: Any
) -> str:
    """A DCD job on the two-taste data (no ratings) of this size, with ``TINY_HP``."""
    dataset = {"n_users": n_users, "n_items": n_items, "n_interactions": n_users * per_user,
               "density": per_user / n_items}
    fields = {"hyperparameters": dict(TINY_HP), "split": {"mode": "random"}, **job}
    return tiny_job(settings, two_taste_csv(n_users, n_items, per_user), dataset, **fields)


def wait_for(settings: Settings, job_id: str, done: Callable[[Job], bool], timeout: float) -> Job:
    """Poll the job row until ``done(row)`` or fail with the row's last state."""
    deadline = time.monotonic() + timeout
    while True:
        with session_scope(settings.database_url) as s:
            row = repo.get_job(s, job_id)
        if done(row):
            return row
        if time.monotonic() > deadline:
            raise AssertionError(
                f"job {job_id} stuck: status={row.status} phase={row.phase} epoch={row.epoch} "
                f"error={row.error}"
            )
        time.sleep(0.2)


class Server:
    """A ``recdistill serve`` subprocess on a free port; ``url`` once it answers /healthz."""

    def __init__(self, settings: Settings, log: Path, *extra: str) -> None:
        from worker.embedded import settings_env

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = settings_env(settings)
        env.update(RECDISTILL_PORT=str(self.port), RECDISTILL_HOST="127.0.0.1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", *extra],
            cwd=ROOT,
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}"
                )
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"server not ready in {timeout}s:\n{self.log.read_text()[-4000:]}")

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (uvicorn shuts down, then the local worker is stopped); SIGKILL the group if stuck."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
