"""Database layer: migrations on a fresh SQLite file, repository CRUD, atomic claims, cancel and activation."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db import repo
from core.db.migrate import current_revision, upgrade_head
from core.db.models import Base, Job, utcnow
from core.db.session import dispose_engines, session_scope
from tests.factories import dataset_row, job_row, model_row


@pytest.fixture()
def db_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    upgrade_head(url)
    yield url
    dispose_engines()


def _dataset(s: Session, **over: object) -> str:
    return dataset_row(s, **{"n_items": 4, **over}).id


def _job(s: Session, dataset_id: str) -> str:
    return job_row(s, dataset_id, hyperparameters={}, seed=0, split={"mode": "random"}).id


def _model(s: Session, job_id: str | None, dataset_id: str, role: str = "student") -> str:
    return model_row(s, dataset_id, job_id, role=role).id


def test_migrations_create_every_table_and_match_the_models(db_url: str) -> None:
    assert current_revision(db_url) == "0004"
    engine = create_engine(db_url)
    with engine.connect() as conn:
        assert {"datasets", "jobs", "models", "activations"} <= set(inspect(conn).get_table_names())
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []
    upgrade_head(db_url)  # idempotent
    assert current_revision(db_url) == "0004"


def test_alembic_command_line_upgrades_a_fresh_sqlite_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "alembic",
            "-c",
            str(root / "alembic.ini"),
            "-x",
            f"url={url}",
            "upgrade",
            "head",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert current_revision(url) == "0004"


def test_0002_adds_a_nullable_sep_to_existing_datasets_and_downgrades(tmp_path: Path) -> None:
    from alembic import command

    from core.db.migrate import alembic_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0001")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO datasets (id, name, original_filename, path, format, user_col, item_col, n_users,"
                " n_items, n_interactions, density, size_bytes, created_at) VALUES ('a' , 'old', 'o.csv',"
                " 'datasets/a/o.csv', 'csv', 'u', 'i', 1, 1, 1, 1.0, 4, '2025-01-01 00:00:00')"
            )
        )
    upgrade_head(url)
    with session_scope(url) as s:
        row = repo.get_dataset(s, "a")
        assert (row.name, row.sep) == ("old", None)
        row.sep = "|"
    command.downgrade(alembic_config(url), "0001")
    with engine.connect() as conn:
        assert "sep" not in {c["name"] for c in inspect(conn).get_columns("datasets")}
        assert conn.execute(text("SELECT name FROM datasets")).scalar_one() == "old"
    engine.dispose()
    dispose_engines()


def test_dataset_crud_and_not_found(db_url: str) -> None:
    with session_scope(db_url) as s:
        ds = _dataset(s)
    with session_scope(db_url) as s:
        row = repo.get_dataset(s, ds)
        assert len(row.id) == 32 and row.n_items == 4
        assert row.created_at.tzinfo is not None
        assert [d.id for d in repo.list_datasets(s)] == [ds]
    with session_scope(db_url) as s, pytest.raises(repo.NotFoundError, match="unknown dataset id"):
        repo.get_dataset(s, "nope")


def test_delete_dataset_refused_while_a_job_uses_it(db_url: str) -> None:
    with session_scope(db_url) as s:
        ds = _dataset(s)
        job = _job(s, ds)
    with session_scope(db_url) as s, pytest.raises(repo.ConflictError, match=job):
        repo.delete_dataset(s, ds)
    with session_scope(db_url) as s:
        s.execute(update(Job).where(Job.id == job).values(status="succeeded"))
    with session_scope(db_url) as s:
        repo.delete_dataset(s, ds)
    with session_scope(db_url) as s:
        assert repo.get_job(s, job).dataset_id is None
        with pytest.raises(repo.NotFoundError):
            repo.get_dataset(s, ds)


def test_foreign_keys_are_enforced(db_url: str) -> None:
    with pytest.raises(IntegrityError), session_scope(db_url) as s:
        _job(s, "0" * 32)


def test_claim_is_exclusive_until_the_lease_expires(db_url: str) -> None:
    with session_scope(db_url) as s:
        job = _job(s, _dataset(s))
    with session_scope(db_url) as s:
        assert repo.claim_job(s, job, "w1", lease_s=60)
    with session_scope(db_url) as s:
        assert not repo.claim_job(s, job, "w2", lease_s=60)
        assert repo.heartbeat(s, job, "w1") and not repo.heartbeat(s, job, "w2")
    with session_scope(db_url) as s:
        s.execute(update(Job).where(Job.id == job).values(heartbeat_at=utcnow() - timedelta(seconds=120)))
    with session_scope(db_url) as s:
        assert repo.claim_job(s, job, "w2", lease_s=60)
    with session_scope(db_url) as s:
        row = repo.get_job(s, job)
        assert (row.status, row.worker_id, row.attempts) == ("running", "w2", 2)
        assert not repo.update_owned_job(s, job, "w1", epoch=3)
        assert repo.update_owned_job(s, job, "w2", epoch=3)


def test_finished_or_cancelled_jobs_cannot_be_claimed(db_url: str) -> None:
    with session_scope(db_url) as s:
        ds = _dataset(s)
        done, cancelled = _job(s, ds), _job(s, ds)
        s.execute(update(Job).where(Job.id == done).values(status="succeeded"))
    with session_scope(db_url) as s:
        assert repo.request_cancel(s, cancelled).status == "cancelled"
    with session_scope(db_url) as s:
        assert not repo.claim_job(s, done, "w", 60)
        assert not repo.claim_job(s, cancelled, "w", 60)
        with pytest.raises(repo.ConflictError, match="already succeeded"):
            repo.request_cancel(s, done)


def test_cancel_of_a_running_job_only_raises_the_flag(db_url: str) -> None:
    with session_scope(db_url) as s:
        job = _job(s, _dataset(s))
        assert repo.claim_job(s, job, "w", 60)
    with session_scope(db_url) as s:
        row = repo.request_cancel(s, job)
        assert (row.status, row.cancel_requested) == ("running", True)


def test_requeue_moves_only_stale_running_jobs_once(db_url: str) -> None:
    with session_scope(db_url) as s:
        ds = _dataset(s)
        fresh, stale, queued = _job(s, ds), _job(s, ds), _job(s, ds)
        repo.claim_job(s, fresh, "w1", 60)
        repo.claim_job(s, stale, "w2", 60)
        s.execute(update(Job).where(Job.id == stale).values(heartbeat_at=utcnow() - timedelta(seconds=300)))
    with session_scope(db_url) as s:
        assert repo.recover_jobs(s, lease_s=60).to_enqueue == [stale]
    with session_scope(db_url) as s:
        assert repo.recover_jobs(s, lease_s=60).to_enqueue == []
        assert repo.get_job(s, stale).status == "queued"
        assert set(repo.recover_jobs(s, lease_s=60, include_queued=True).to_enqueue) == {stale, queued}
        assert repo.count_jobs_by_status(s) == {
            "queued": 2,
            "running": 1,
            "succeeded": 0,
            "failed": 0,
            "cancelled": 0,
        }
        assert [j.id for j in repo.list_jobs(s, status="running")] == [fresh]
        with pytest.raises(ValueError, match="status"):
            repo.list_jobs(s, status="bogus")


def test_recovery_requeues_a_dead_workers_job_and_cancels_one_with_a_pending_cancel(db_url: str) -> None:
    with session_scope(db_url) as s:
        ds = _dataset(s)
        plain, cancelling, limbo, other = _job(s, ds), _job(s, ds), _job(s, ds), _job(s, ds)
        for job in (plain, cancelling):
            assert repo.claim_job(s, job, "dead", 60)
        assert repo.claim_job(s, other, "alive", 60)
        # A cancel that raced with a hand-back: queued with the flag, refused by every claim.
        s.execute(update(Job).where(Job.id == limbo).values(cancel_requested=True))
    with session_scope(db_url) as s:
        repo.request_cancel(s, cancelling)
    with session_scope(db_url) as s:
        assert not repo.claim_job(s, limbo, "w", 60)
        rec = repo.recover_jobs(s, worker_ids=["dead"])  # fresh heartbeats: only the known-dead worker
    assert (rec.requeued, sorted(rec.cancelled), rec.queued) == ([plain], sorted([cancelling, limbo]), [])
    with session_scope(db_url) as s:
        rows = {j: repo.get_job(s, j) for j in (plain, cancelling, limbo, other)}
        assert [(rows[j].status, rows[j].worker_id) for j in (plain, cancelling, limbo, other)] == [
            ("queued", None),
            ("cancelled", None),
            ("cancelled", None),
            ("running", "alive"),
        ]
        assert rows[cancelling].finished_at is not None and rows[plain].finished_at is None
        assert repo.recover_jobs(s, worker_ids=["dead"]) == repo.Recovery()  # nothing twice
        assert repo.final_job_ids(s, [plain, cancelling, "f" * 32]) == {cancelling, "f" * 32}


def test_activation_keeps_the_previous_model_for_rollback(db_url: str) -> None:
    with session_scope(db_url) as s:
        ds = _dataset(s)
        job = _job(s, ds)
        s.execute(update(Job).where(Job.id == job).values(status="succeeded"))
        m1, m2 = _model(s, job, ds), _model(s, job, ds)
    with session_scope(db_url) as s:
        assert repo.active_model(s) is None
        repo.activate_model(s, m1)
    with session_scope(db_url) as s:
        act = repo.activate_model(s, m2)
        assert act.previous_model_id == m1
    with session_scope(db_url) as s:
        assert repo.active_model(s).id == m2  # type: ignore[union-attr]
        repo.activate_model(s, m1)  # rollback
        assert repo.active_model(s).id == m1  # type: ignore[union-attr]
        assert [a.model_id for a in repo.list_activations(s)] == [m1, m2, m1]


def test_activation_refused_for_failed_jobs_and_teachers(db_url: str) -> None:
    with session_scope(db_url) as s:
        ds = _dataset(s)
        job = _job(s, ds)
        s.execute(update(Job).where(Job.id == job).values(status="failed"))
        student, teacher = _model(s, job, ds), _model(s, job, ds, role="teacher")
    with session_scope(db_url) as s:
        with pytest.raises(repo.ConflictError, match="failed"):
            repo.activate_model(s, student)
        with pytest.raises(repo.ConflictError, match="teacher"):
            repo.activate_model(s, teacher)
        with pytest.raises(repo.NotFoundError, match="unknown model id"):
            repo.activate_model(s, "x" * 32)
        assert repo.active_model(s) is None


def test_sqlite_runs_in_wal_mode_with_foreign_keys(db_url: str) -> None:
    with session_scope(db_url) as s:
        assert s.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert s.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_0003_adds_a_nullable_latency_to_existing_models_and_downgrades(tmp_path: Path) -> None:
    from alembic import command

    from core.db.migrate import alembic_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0002")
    with session_scope(url) as s:
        ds = dataset_row(s)
        s.execute(
            text(
                "INSERT INTO models (id, dataset_id, role, model_name, dim, artifact_path, n_params, size_bytes,"
                " metrics, created_at) VALUES ('m', :ds, 'student', 'bpr', 4, 'models/m', 28, 112, '{}',"
                " '2025-01-01 00:00:00')"
            ),
            {"ds": ds.id},
        )
    upgrade_head(url)
    with session_scope(url) as s:
        row = repo.get_model(s, "m")
        assert row.latency is None  # never timed: the report says so
        row.latency = {"k": 10}
    command.downgrade(alembic_config(url), "0002")
    engine = create_engine(url)
    with engine.connect() as conn:
        assert "latency" not in {c["name"] for c in inspect(conn).get_columns("models")}
        assert conn.execute(text("SELECT n_params FROM models")).scalar_one() == 28
    engine.dispose()
    dispose_engines()


def test_a_job_that_crashes_its_workers_fails_at_max_crashes_and_a_hand_back_is_not_a_crash(db_url: str) -> None:
    with session_scope(db_url) as s:
        job = _job(s, _dataset(s))
        assert repo.claim_job(s, job, "w1", 60, max_crashes=3)
    with session_scope(db_url) as s:  # the worker hands its own job back (shutdown): not counted
        assert repo.recover_jobs(s, worker_ids=["w1"]).requeued == [job]
        assert repo.get_job(s, job).crashes == 0
        assert repo.claim_job(s, job, "w2", 60, max_crashes=3)
    with session_scope(db_url) as s:  # w2 dies: its server sees it
        assert repo.recover_jobs(s, worker_ids=["w2"], max_crashes=3).requeued == [job]
        assert repo.claim_job(s, job, "w3", 60, max_crashes=3)
        # w3 dies unseen: its lease lapses and another worker takes the job over (the second crash)
        s.execute(update(Job).where(Job.id == job).values(heartbeat_at=utcnow() - timedelta(seconds=300)))
    with session_scope(db_url) as s:
        assert repo.claim_job(s, job, "w4", 60, max_crashes=3)
        assert repo.get_job(s, job).crashes == 2
        s.execute(update(Job).where(Job.id == job).values(heartbeat_at=utcnow() - timedelta(seconds=300)))
    with session_scope(db_url) as s:  # a third crash would reach the cap: no take-over, the sweep fails it
        assert not repo.claim_job(s, job, "w5", 60, max_crashes=3)
        rec = repo.recover_jobs(s, lease_s=60, max_crashes=3)
    assert (rec.failed, rec.requeued, rec.to_enqueue) == ([job], [], [])
    with session_scope(db_url) as s:
        row = repo.get_job(s, job)
        assert (row.status, row.crashes, row.worker_id, row.attempts) == ("failed", 3, None, 4)
        assert row.finished_at is not None and "3 times" in row.error and "RECDISTILL_JOB_MAX_CRASHES" in row.error
        assert not repo.claim_job(s, job, "w6", 60, max_crashes=3)
        assert repo.recover_jobs(s, lease_s=60, max_crashes=3) == repo.Recovery()  # nothing twice


def test_0004_counts_no_crashes_for_existing_jobs_and_downgrades(tmp_path: Path) -> None:
    from alembic import command

    from core.db.migrate import alembic_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0003")
    with session_scope(url) as s:
        s.execute(
            text(
                "INSERT INTO jobs (id, status, method, student, hyperparameters, seed, split, epoch, max_epochs,"
                " progress, history, cancel_requested, attempts, created_at) VALUES ('j', 'queued', 'dcd',"
                " '{}', '{}', 0, '{}', 0, 0, 0.0, '[]', 0, 2, '2025-01-01 00:00:00')"
            )
        )
    upgrade_head(url)
    with session_scope(url) as s:
        assert (repo.get_job(s, "j").crashes, repo.get_job(s, "j").attempts) == (0, 2)
    command.downgrade(alembic_config(url), "0003")
    engine = create_engine(url)
    with engine.connect() as conn:
        assert "crashes" not in {c["name"] for c in inspect(conn).get_columns("jobs")}
        assert conn.execute(text("SELECT attempts FROM jobs")).scalar_one() == 2
    engine.dispose()
    dispose_engines()
