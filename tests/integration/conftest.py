"""Fixtures for integration tests on the machine's real Postgres and Redis (they fail loudly when down)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg import sql

from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

PG_ADMIN = os.environ.get("RECDISTILL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("RECDISTILL_TEST_REDIS", "redis://127.0.0.1:6379")


@pytest.fixture()
def pg_url() -> Iterator[str]:
    """A throwaway database recdistill_test_<hex>, dropped afterwards; a SQLAlchemy URL to it."""
    name = f"recdistill_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        from core.db.session import dispose_engines

        dispose_engines()
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture()
def redis_url() -> Iterator[str]:
    """A Redis database number picked for this test and flushed before and after."""
    client = redis.Redis.from_url(f"{REDIS_URL}/0", socket_connect_timeout=5)
    client.ping()
    db = 10 + uuid.uuid4().int % 5
    url = f"{REDIS_URL}/{db}"
    one = redis.Redis.from_url(url)
    one.flushdb()
    try:
        yield url
    finally:
        one.flushdb()
        one.close()
        client.close()


# The tiny-job helpers live beside the worker tests; integration tests reuse them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker"))


@pytest.fixture()
def distributed(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings for the distributed mode on a throwaway Postgres database and a Redis db, migrated."""
    from core.db.migrate import upgrade_head

    settings = Settings(
        RECDISTILL_HOME=str(tmp_path),
        DATABASE_URL=pg_url,
        CELERY_BROKER_URL=redis_url,
        RECDISTILL_DEVICE="cpu",
        RECDISTILL_JOB_LEASE=3,
        RECDISTILL_HEARTBEAT=0.5,
        RECDISTILL_SWEEP_INTERVAL=1,
        RECDISTILL_TORCH_THREADS=1,
    )
    settings.ensure_dirs()
    upgrade_head(pg_url)
    yield settings


class Workers:
    """``recdistill worker`` subprocesses started by a test, all killed at its end."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str) -> subprocess.Popen[bytes]:
        from worker.embedded import settings_env

        log = (self.log_dir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "worker", "--name", f"{name}@test"],
            cwd=ROOT,
            env=settings_env(self.settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.log_dir.glob("*.log")))

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture()
def workers(distributed: Settings, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(distributed, tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()
