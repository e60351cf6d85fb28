"""The job pipeline in-process (no Celery) on a tiny synthetic dataset: rows, checkpoints, bundle, resume,
cancellation, failures and idempotency."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from core.db import repo
from core.db.models import Job, utcnow
from core.db.session import dispose_engines, session_scope
from core.jobs import phases
from core.jobs.context import derived_model_id
from core.jobs.lifecycle import run_job
from core.settings import Settings
from core.storage import ArtifactStore
from tests.factories import job_settings, tiny_job, two_taste_csv

TRAIN_HP = {"epochs": 3, "teacher_epochs": 3, "batch_size": 256, "lr": 0.01}
DCD_HP = {**TRAIN_HP, "m": 10, "p": 3, "rkd_k": 3, "rkd_l": 3}


@pytest.fixture()
def settings(tmp_path: Path) -> Iterator[Settings]:
    yield job_settings(tmp_path, RECDISTILL_JOB_LEASE=2)
    dispose_engines()


def make_job(settings: Settings, content: str | None = None, **job: Any) -> str:
    """A DCD job on ``content`` (default: the two-taste data with ratings) with this file's fast settings."""
    data = two_taste_csv(ratings=True) if content is None else content
    fields = {"hyperparameters": dict(DCD_HP), "split": {"mode": "random", "ratios": [0.8, 0.1, 0.1]}, **job}
    return tiny_job(settings, data, {"rating_col": "rating"}, **fields)


def get(settings: Settings, job_id: str) -> Job:
    with session_scope(settings.database_url) as s:
        return repo.get_job(s, job_id)


def test_dcd_job_end_to_end(settings: Settings) -> None:
    job_id = make_job(settings)
    assert run_job(job_id, settings, worker_id="w1") == "succeeded"
    job = get(settings, job_id)
    assert (job.status, job.phase, job.progress, job.error) == ("succeeded", "index", 1.0, None)
    assert [(h["phase"], h["epoch"]) for h in job.history] == [("teacher", e) for e in (1, 2, 3)] + [
        ("distill", e) for e in (1, 2, 3)
    ]
    assert all("ndcg@10" in h["valid"] for h in job.history)
    store = ArtifactStore(settings.artifact_dir)
    with session_scope(settings.database_url) as s:
        student = repo.get_model(s, job.student_model_id or "")
        teacher = repo.get_model(s, job.result_teacher_model_id or "")
        assert (student.role, student.dim, student.method, teacher.role, teacher.dim) == (
            "student",
            4,
            "dcd",
            "teacher",
            8,
        )
        assert student.teacher_model_id == teacher.id
        assert student.compression_ratio == pytest.approx(teacher.n_params / student.n_params)
        assert student.compression_ratio == pytest.approx(2.0)
        assert student.metrics.keys() >= {"ndcg@10", "recall@10", "hit@5", "mrr@20"}
        assert student.teacher_metrics == teacher.metrics
        folder = store.resolve(student.artifact_path)
    assert student.size_bytes == (folder / "model.safetensors").stat().st_size > 0
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["role"] == "student" and len(manifest["item_ids"]) == 30
    meta = json.loads((folder / "serving" / "meta.json").read_text())
    assert meta["model_id"] == student.id and meta["n_items"] == 30 and meta["dim"] == 4
    assert not store.job_dir(job_id).exists()  # train state dropped once final
    # Idempotent: a re-delivered message for a finished job changes nothing.
    assert run_job(job_id, settings, worker_id="w2") == "succeeded"
    assert get(settings, job_id).attempts == 1


def test_student_bundle_serves_recommendations(settings: Settings) -> None:
    from core.index import ServingBundle

    job_id = make_job(settings, method="none", hyperparameters=TRAIN_HP)
    assert run_job(job_id, settings) == "succeeded"
    store = ArtifactStore(settings.artifact_dir)
    bundle = ServingBundle.load(store.serving_dir(derived_model_id(job_id, "student")))
    rec = bundle.recommend("u0", 5)
    assert rec.source == "personalized" and len(rec.items) == 5


class _Crash(BaseException):
    """Stands in for kill -9: not an Exception, so the pipeline records nothing on the way out."""


def test_interrupted_job_resumes_from_its_last_epoch(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    hp = dict(DCD_HP, epochs=4)
    job_id = make_job(settings, hyperparameters=hp)
    original = phases.ProgressWriter.on_epoch_end

    def crash_after_distill_epoch_2(self: phases.ProgressWriter, report: Any) -> None:
        original(self, report)
        if self.phase == "distill" and report.epoch == 2:
            raise _Crash()

    monkeypatch.setattr(phases.ProgressWriter, "on_epoch_end", crash_after_distill_epoch_2)
    with pytest.raises(_Crash):
        run_job(job_id, settings, worker_id="w1")
    job = get(settings, job_id)
    assert (job.status, job.phase, job.epoch, job.worker_id) == ("running", "distill", 2, "w1")
    store = ArtifactStore(settings.artifact_dir)
    assert (store.checkpoint_dir(job_id, "distill") / "train_state.safetensors").is_file()
    seen_epochs: list[tuple[str, int]] = []
    record = phases.ProgressWriter.on_epoch_end

    def spy(self: phases.ProgressWriter, report: Any) -> None:
        seen_epochs.append((self.phase, report.epoch))
        record(self, report)

    # The lease has not lapsed: nobody else may run it.
    assert run_job(job_id, settings, worker_id="w2") == "busy"
    with session_scope(settings.database_url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=60)))
    monkeypatch.setattr(phases.ProgressWriter, "on_epoch_end", spy)
    assert run_job(job_id, settings, worker_id="w2") == "succeeded"
    assert seen_epochs == [("distill", 3), ("distill", 4)]  # resumed: no teacher, no epoch 1 again
    monkeypatch.setattr(phases.ProgressWriter, "on_epoch_end", original)
    job = get(settings, job_id)
    assert job.attempts == 2 and job.worker_id == "w2"
    assert [h["epoch"] for h in job.history if h["phase"] == "distill"] == [1, 2, 3, 4]
    assert [h["epoch"] for h in job.history if h["phase"] == "teacher"] == [1, 2, 3]

    # The resumed run ends exactly where an uninterrupted one with the same seed ends.
    ref_id = make_job(settings, hyperparameters=hp)
    assert run_job(ref_id, settings) == "succeeded"
    with session_scope(settings.database_url) as s:
        resumed = repo.get_model(s, derived_model_id(job_id, "student")).metrics
        reference = repo.get_model(s, derived_model_id(ref_id, "student")).metrics
    assert resumed == pytest.approx(reference, abs=1e-6)


def test_cancellation_stops_within_an_epoch(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = make_job(settings, hyperparameters=dict(DCD_HP, epochs=50))
    original = phases.ProgressWriter.on_epoch_end

    def cancel_at_distill_epoch_1(self: phases.ProgressWriter, report: Any) -> None:
        if self.phase == "distill" and report.epoch == 1:  # the user cancels while epoch 1 runs
            with session_scope(settings.database_url) as s:
                repo.request_cancel(s, job_id)
        original(self, report)

    monkeypatch.setattr(phases.ProgressWriter, "on_epoch_end", cancel_at_distill_epoch_1)
    assert run_job(job_id, settings) == "cancelled"
    job = get(settings, job_id)
    assert (job.status, job.phase, job.epoch, job.student_model_id) == ("cancelled", "distill", 1, None)
    assert job.finished_at is not None


def test_queued_job_cancelled_before_it_runs_is_not_run(settings: Settings) -> None:
    job_id = make_job(settings)
    with session_scope(settings.database_url) as s:
        repo.request_cancel(s, job_id)
    assert run_job(job_id, settings) == "cancelled"
    assert get(settings, job_id).attempts == 0


@pytest.mark.parametrize(
    ("content", "job", "needle"),
    [
        ("user,item,rating\n", {}, "no interactions"),
        ("user;item;rating\nu1;i1;5\nu2;i2;4\n", {}, "user"),
        ("user,item,rating\nu1,i1,five\nu2,i2,4\n", {}, "rating"),
        (None, {"hyperparameters": {"epochs": 0}}, "epochs"),
        (None, {"hyperparameters": {"bogus": 1}}, "bogus"),
        (None, {"method": "nope"}, "nope"),
        (None, {"teacher": {"model": "transformer", "dim": 8}}, "transformer"),
    ],
)
def test_deterministic_errors_fail_the_job_with_their_message(
    settings: Settings, content: str | None, job: dict[str, Any], needle: str
) -> None:
    job_id = make_job(settings, content, **job)
    assert run_job(job_id, settings) == "failed"
    row = get(settings, job_id)
    assert row.status == "failed" and row.finished_at is not None
    assert needle in (row.error or "").lower(), row.error
    assert "internal error" not in (row.error or "")


def test_reused_teacher_skips_the_teacher_phase(settings: Settings) -> None:
    first = make_job(settings, method="none", hyperparameters=TRAIN_HP)
    assert run_job(first, settings) == "succeeded"
    teacher_id = derived_model_id(first, "teacher")
    with session_scope(settings.database_url) as s:
        dataset_id = repo.get_job(s, first).dataset_id
    second = make_job(
        settings,
        teacher=None,
        teacher_model_id=teacher_id,
        method="rrd",
        hyperparameters={"epochs": 2, "m": 10, "k": 3, "l": 3},
    )
    with session_scope(settings.database_url) as s:  # same file => same split => the teacher fits
        s.execute(update(Job).where(Job.id == second).values(dataset_id=dataset_id))
    assert run_job(second, settings) == "succeeded"
    job = get(settings, second)
    assert {h["phase"] for h in job.history} == {"distill"}
    with session_scope(settings.database_url) as s:
        student = repo.get_model(s, job.student_model_id or "")
        assert student.teacher_model_id == teacher_id
        assert student.teacher_metrics == repo.get_model(s, teacher_id).metrics


def test_unknown_job_is_dropped(settings: Settings) -> None:
    assert run_job("f" * 32, settings) == "missing"


def test_transient_errors_are_raised_and_the_job_handed_back(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    from core.jobs import steps

    def unreachable(*_: Any, **__: Any) -> None:
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("database is down"))

    job_id = make_job(settings)
    monkeypatch.setattr(steps, "load_split", unreachable)
    with pytest.raises(OperationalError):
        run_job(job_id, settings, worker_id="w1")
    job = get(settings, job_id)
    assert (job.status, job.worker_id, job.error) == ("queued", None, None)


def _crash_mid_distill(settings: Settings, monkeypatch: pytest.MonkeyPatch, job_id: str) -> None:
    """Run ``job_id`` as worker w1 until it dies (as by kill -9) after distill epoch 1, its state on disk."""
    original = phases.ProgressWriter.on_epoch_end

    def crash(self: phases.ProgressWriter, report: Any) -> None:
        original(self, report)
        if self.phase == "distill" and report.epoch == 1:
            raise _Crash()

    monkeypatch.setattr(phases.ProgressWriter, "on_epoch_end", crash)
    with pytest.raises(_Crash):
        run_job(job_id, settings, worker_id="w1")
    monkeypatch.setattr(phases.ProgressWriter, "on_epoch_end", original)
    assert ArtifactStore(settings.artifact_dir).job_dir(job_id).is_dir()


def _lapse_lease(settings: Settings, job_id: str) -> None:
    with session_scope(settings.database_url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=60)))


def test_cancel_then_a_worker_crash_ends_cancelled(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 10 #7: the job used to stay "queued" for ever (every claim refused as busy), its data set could
    # not be deleted and its training state stayed on disk.
    job_id = make_job(settings, hyperparameters=dict(DCD_HP, epochs=4))
    _crash_mid_distill(settings, monkeypatch, job_id)
    with session_scope(settings.database_url) as s:
        assert repo.request_cancel(s, job_id).status == "running"  # the dead worker will never see it
    assert run_job(job_id, settings, worker_id="w2") == "busy"  # the lease has not lapsed yet
    _lapse_lease(settings, job_id)
    assert run_job(job_id, settings, worker_id="w2") == "cancelled"
    job = get(settings, job_id)
    assert (job.status, job.worker_id, job.attempts, job.student_model_id) == ("cancelled", None, 1, None)
    assert job.finished_at is not None
    assert not ArtifactStore(settings.artifact_dir).job_dir(job_id).exists()
    with session_scope(settings.database_url) as s:
        repo.delete_dataset(s, job.dataset_id or "")  # no longer refused as in use


def test_sweep_honours_the_cancel_of_a_dead_workers_job(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.jobs.lifecycle import recover

    job_id = make_job(settings, hyperparameters=dict(DCD_HP, epochs=4))
    _crash_mid_distill(settings, monkeypatch, job_id)
    with session_scope(settings.database_url) as s:
        repo.request_cancel(s, job_id)
    assert recover(settings, lease_s=settings.job_lease_s).cancelled == []  # its lease still runs
    _lapse_lease(settings, job_id)
    rec = recover(settings, lease_s=settings.job_lease_s)
    assert (rec.cancelled, rec.to_enqueue) == ([job_id], [])
    assert get(settings, job_id).status == "cancelled"
    assert not ArtifactStore(settings.artifact_dir).job_dir(job_id).exists()


def test_a_cancel_that_lands_on_a_handed_back_job_is_honoured(settings: Settings) -> None:
    # The API flags a running job while its worker hands it back (queued): no claim would ever take it.
    job_id = make_job(settings)
    with session_scope(settings.database_url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
    assert run_job(job_id, settings) == "cancelled"
    job = get(settings, job_id)
    assert (job.status, job.attempts) == ("cancelled", 0) and job.finished_at is not None


def test_a_shutdown_with_a_pending_cancel_ends_the_job_cancelled(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.jobs import context

    job_id = make_job(settings, hyperparameters=dict(DCD_HP, epochs=50))
    original = phases.ProgressWriter.on_epoch_end

    def cancel_then_shutdown(self: phases.ProgressWriter, report: Any) -> None:
        if self.phase == "distill" and report.epoch == 1:
            with session_scope(settings.database_url) as s:
                repo.request_cancel(s, job_id)
            monkeypatch.setattr(context, "_shutdown", _Set())  # SIGTERM before the cancel is seen
        original(self, report)

    monkeypatch.setattr(phases.ProgressWriter, "on_epoch_end", cancel_then_shutdown)
    assert run_job(job_id, settings) == "cancelled"  # not "interrupted": nothing left to re-queue
    assert get(settings, job_id).status == "cancelled"
    assert not ArtifactStore(settings.artifact_dir).job_dir(job_id).exists()


class _Set:
    """A threading.Event that is always set."""

    def is_set(self) -> bool:
        return True
