"""Migrations and the repository on a real Postgres (throwaway database)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from core.db import repo
from core.db.migrate import current_revision, upgrade_head
from core.db.models import Base
from core.db.session import session_scope
from tests.factories import dataset_row, job_row

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_alembic_upgrade_head_on_postgres_matches_the_models(pg_url: str) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "alembic",
            "-c",
            str(ROOT / "alembic.ini"),
            "-x",
            f"url={pg_url}",
            "upgrade",
            "head",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert current_revision(pg_url) == "0004"
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        assert {"datasets", "jobs", "models", "activations"} <= set(inspect(conn).get_table_names())
        fks = {fk["name"] for fk in inspect(conn).get_foreign_keys("jobs")}
        assert "fk_jobs_student_model_id_models" in fks
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    engine.dispose()


def test_only_one_of_many_concurrent_claims_wins_on_postgres(pg_url: str) -> None:
    upgrade_head(pg_url)
    with session_scope(pg_url) as s:
        ds = dataset_row(s).id
        job = job_row(s, ds, method="none", teacher=None).id
    wins: list[str] = []
    barrier = threading.Barrier(8)

    def claim(worker: str) -> None:
        barrier.wait()
        with session_scope(pg_url) as s:
            if repo.claim_job(s, job, worker, lease_s=60):
                wins.append(worker)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    with session_scope(pg_url) as s:
        assert repo.get_job(s, job).worker_id == wins[0]


def test_the_compression_report_finds_its_student_alone_run_on_postgres(pg_url: str) -> None:
    from core.report import model_report
    from tests.factories import model_row

    upgrade_head(pg_url)
    split = {"mode": "random", "ratios": [0.8, 0.1, 0.1]}
    with session_scope(pg_url) as s:
        ds = dataset_row(s).id
        ids = {}
        for method, ndcg in (("none", 0.2), ("dcd", 0.25)):
            job = job_row(s, ds, status="succeeded", method=method, seed=0, split=split)
            ids[method] = model_row(s, ds, job.id, method=method, metrics={"ndcg@10": ndcg},
                                    teacher_metrics={"ndcg@10": 0.3}, latency={"student": None}).id
    with session_scope(pg_url) as s:
        report = model_report(s, ids["dcd"])
    assert report["baseline_model_id"] == ids["none"] and report["gap_closed"] == pytest.approx(0.5)
