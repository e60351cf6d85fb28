"""The phases of one claimed job, in order: teacher, distill, evaluate, index (``core.jobs.lifecycle`` runs them).

Every step that changes the database checks that the job is still ours; model ids are derived from the
job id, so a re-delivered job overwrites its own artifacts instead of leaving duplicates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import JobPhase, JobSpec, JobStatus, ModelRole
from core.data import SplitData
from core.db import repo
from core.db.models import utcnow
from core.db.session import session_scope
from core.index import BuiltIndex, IndexSpec
from core.jobs import memory, steps
from core.jobs.context import JobContext, record_model
from core.models.base import Recommender
from core.train import EpochReport, FitResult, TrainingCancelled

log = logging.getLogger(__name__)
REPORT_K = 10  # the k of the report's latency (the API's default k)


@dataclass
class Teacher:
    model: Recommender
    id: str
    n_params: int
    metrics: dict[str, float] | None  # test metrics on this job's split, when already known


class ProgressWriter:
    """Fit callback: epoch, progress, history and heartbeat go to the job row after every epoch."""

    def __init__(self, ctx: JobContext, phase: JobPhase, history: list[dict[str, Any]]) -> None:
        self.ctx, self.phase, self.history = ctx, phase, history

    def on_epoch_end(self, report: EpochReport) -> None:
        entry = {
            "phase": self.phase,
            "epoch": report.epoch,
            "losses": report.losses,
            "valid": report.valid,
            "seconds": round(report.seconds, 4),
        }
        self.replace(
            [h for h in self.history if h["phase"] == self.phase and h["epoch"] < report.epoch] + [entry]
        )
        self.ctx.write(
            phase=self.phase,
            epoch=report.epoch,
            max_epochs=report.max_epochs,
            progress=self.ctx.progress(self.phase, report.epoch / report.max_epochs),
            history=self.history,
            heartbeat_at=utcnow(),
        )
        self.ctx.should_cancel(force=True)  # fit asks right after this callback

    def start(self, max_epochs: int) -> None:
        """Enter the phase: epoch = the last one recorded for it (0 when fresh, > 0 when resuming)."""
        done = max((h["epoch"] for h in self.history if h["phase"] == self.phase), default=0)
        fraction = min(1.0, done / max_epochs) if max_epochs > 0 else 0.0
        self.ctx.write(
            phase=self.phase,
            epoch=done,
            max_epochs=max_epochs,
            progress=self.ctx.progress(self.phase, fraction),
        )

    def replace(self, phase_entries: list[dict[str, Any]]) -> None:
        """Swap this phase's entries (a resumed fit must not repeat epochs already recorded)."""
        self.history[:] = [h for h in self.history if h["phase"] != self.phase] + phase_entries

    def finish(self, result: FitResult) -> None:
        """Record the fit's complete history (it survives restarts inside the checkpoint)."""
        self.replace(
            [
                {
                    "phase": self.phase,
                    "epoch": h["epoch"],
                    "losses": h["losses"],
                    "valid": h["valid"],
                    "seconds": round(float(h["seconds"]), 4),
                }
                for h in result.history
            ]
        )
        # No silent truncation: the phase's last entry says what ended it ("cap": raise epochs and rerun).
        if result.history:
            self.history[-1]["stopped_by"] = result.stopped_by
        if result.stopped_by == "cap":
            log.warning("job %s: %s phase stopped at its epoch cap (%d) before patience did; it may be undertrained",
                        self.ctx.job_id, self.phase, result.epochs_run)
        self.ctx.write(
            history=self.history, epoch=result.epochs_run, progress=self.ctx.progress(self.phase, 1.0)
        )


def _check_cancel(ctx: JobContext, where: str) -> None:
    if ctx.should_cancel(force=True):
        raise TrainingCancelled(f"cancelled before {where}")


def execute(ctx: JobContext) -> None:
    """Run the claimed job ``ctx.job_id`` to success (errors propagate to ``core.jobs.lifecycle``)."""
    url = ctx.settings.database_url
    with session_scope(url) as s:
        job = repo.get_job(s, ctx.job_id)
        if job.dataset_id is None:
            raise ValueError(f"job {job.id}'s dataset was deleted")
        ds = repo.get_dataset(s, job.dataset_id)
        dataset = {
            c: getattr(ds, c)
            for c in (
                "path",
                "format",
                "sep",
                "user_col",
                "item_col",
                "rating_col",
                "timestamp_col",
                "rating_threshold",
            )
        }
        spec = JobSpec.from_row(job)
        result_teacher = job.result_teacher_model_id
        history = list(job.history or [])
    if ctx.settings.torch_threads is not None:
        steps.set_threads(ctx.settings.torch_threads)
    reuse = spec.teacher_model_id or result_teacher
    ctx.phases = ([JobPhase.TEACHER] if not reuse else []) + [JobPhase.DISTILL, JobPhase.EVALUATE, JobPhase.INDEX]
    device = ctx.settings.device
    data = steps.load_split(ctx.store.resolve(dataset["path"]), dataset, spec.split, spec.seed)
    log.info("job %s: %d users, %d items, phases %s", ctx.job_id, data.n_users, data.n_items, ctx.phases)
    # This worker's budget, which may be below the API's: the job fails now, not after RECDISTILL_JOB_MAX_CRASHES
    # runs killed for memory.
    memory.check(spec, data.n_users, data.n_items, *memory.budget(ctx.settings.job_memory_mb))

    teacher = _load_teacher(ctx, reuse, data) if reuse else _train_teacher(ctx, spec, data, history)
    _check_cancel(ctx, "distillation")
    # Enter the phase before prepare(): computing the teacher's top-M lists can take a while on big data.
    writer = ProgressWriter(ctx, JobPhase.DISTILL, history)
    writer.start(spec.student_train.epochs)
    # HetComp trains its ensemble's teachers here (minutes): a cancel is honoured during that too, and their
    # trajectories are kept in the job's folder, so a job resumed after its worker died does not train them again.
    distiller = steps.make_distiller(spec.method, spec.distiller, teacher.model, data, device,
                                     trajectory_cache=ctx.store.job_dir(ctx.job_id) / "trajectories",
                                     should_cancel=ctx.should_cancel)
    student, result = steps.train_model(
        spec.student,
        data,
        spec.student_train.model_copy(update={"device": device}),
        ctx.store.checkpoint_dir(ctx.job_id, JobPhase.DISTILL),
        [writer],
        ctx.should_cancel,
        distiller=distiller,
    )
    writer.finish(result)
    del distiller

    _check_cancel(ctx, "evaluation")
    ctx.write(phase=JobPhase.EVALUATE, progress=ctx.progress(JobPhase.EVALUATE, 0.0))
    metrics = steps.test_metrics(student, data)
    teacher_metrics = (
        teacher.metrics if teacher.metrics is not None else steps.test_metrics(teacher.model, data)
    )

    _check_cancel(ctx, "indexing")
    ctx.write(phase=JobPhase.INDEX, progress=ctx.progress(JobPhase.INDEX, 0.0))
    _publish_student(ctx, spec, data, student, result, teacher, metrics, teacher_metrics)
    ctx.store.remove(ctx.store.job_dir(ctx.job_id))


def _train_teacher(ctx: JobContext, spec: JobSpec, data: SplitData, history: list[dict[str, Any]]) -> Teacher:
    if spec.teacher is None:
        raise ValueError("job has neither teacher {model, dim} nor teacher_model_id")
    writer = ProgressWriter(ctx, JobPhase.TEACHER, history)
    writer.start(spec.teacher_train.epochs)
    train = spec.teacher_train.model_copy(update={"device": ctx.settings.device})
    model, result = steps.train_model(
        spec.teacher,
        data,
        train,
        ctx.store.checkpoint_dir(ctx.job_id, JobPhase.TEACHER),
        [writer],
        ctx.should_cancel,
    )
    writer.finish(result)
    metrics = steps.test_metrics(model, data)
    manifest = {
        "role": ModelRole.TEACHER,
        "job_id": ctx.job_id,
        "seed": spec.seed,
        "metrics": metrics,
        "best_epoch": result.best_epoch,
        "epochs": result.epochs_run,
        "stopped_by": result.stopped_by,
        "train": train.model_dump(),
    }
    teacher_id = record_model(
        ctx,
        ModelRole.TEACHER,
        spec.teacher,
        lambda folder, _: steps.save_model(folder, model, data, manifest),
        dim=model.dim,
        n_params=steps.n_params(model),
        id_field="result_teacher_model_id",
        job_update={},
        lost_while="saving its teacher",
        dataset_id=spec.dataset_id,
        method=None,
        metrics=metrics,
    )
    return Teacher(model, teacher_id, steps.n_params(model), metrics)


def _load_teacher(ctx: JobContext, teacher_id: str, data: SplitData) -> Teacher:
    with session_scope(ctx.settings.database_url) as s:
        row = repo.get_model(s, teacher_id)
        path, stored_metrics = row.artifact_path, dict(row.metrics or {})
    model, manifest = steps.load_model(ctx.store.resolve(path), data, ctx.settings.device)
    same_split = manifest.get("data_fingerprint") == data.fingerprint
    log.info("job %s reuses teacher %s (same split: %s)", ctx.job_id, teacher_id, same_split)
    return Teacher(model, teacher_id, steps.n_params(model), stored_metrics if same_split else None)


def _measure_latency(
    ctx: JobContext, spec: JobSpec, data: SplitData, student: Recommender, teacher: Recommender,
    built: BuiltIndex | None,
) -> dict[str, Any] | None:
    """The compression report's latency: the student's index and the teacher's (an index when it is a
    dot-product model, its full_scores top-K otherwise), timed on the same random users after evaluation, so
    the metrics cannot depend on it. None when RECDISTILL_REPORT_LATENCY_QUERIES is 0."""
    queries = ctx.settings.report_latency_queries
    if queries <= 0:
        return None
    index = IndexSpec.of(ctx.settings)
    measured = {
        "student": steps.measure_latency(student, data, queries, index, k=REPORT_K, seed=spec.seed, built=built),
        "teacher": steps.measure_latency(teacher, data, queries, index, k=REPORT_K, seed=spec.seed),
    }
    log.info("job %s: recommend p50 student %.3f ms, teacher %.3f ms (%s)", ctx.job_id,
             measured["student"]["p50_ms"], measured["teacher"]["p50_ms"], measured["teacher"]["method"])
    return measured


def _publish_student(
    ctx: JobContext,
    spec: JobSpec,
    data: SplitData,
    student: Recommender,
    result: FitResult,
    teacher: Teacher,
    metrics: dict[str, float],
    teacher_metrics: dict[str, float],
) -> None:
    manifest = {
        "role": ModelRole.STUDENT,
        "job_id": ctx.job_id,
        "seed": spec.seed,
        "method": spec.method,
        "teacher_model_id": teacher.id,
        "metrics": metrics,
        "teacher_metrics": teacher_metrics,
        "best_epoch": result.best_epoch,
        "epochs": result.epochs_run,
        "stopped_by": result.stopped_by,
        "hyperparameters": spec.hyperparameters,
    }

    # The student's index is built once, here in the worker (all cores), saved in its bundle and timed for the
    # report; API processes only map it.
    index = IndexSpec.of(ctx.settings)
    built = steps.serving_index(steps.bundle_arrays(student, data), index) if student.is_dot_product else None

    def save(folder: Path, student_id: str) -> int:
        size = steps.save_model(folder, student, data, manifest)
        steps.export_bundle(folder / "serving", student, data, student_id, index, built)
        return size

    latency = _measure_latency(ctx, spec, data, student, teacher.model, built)
    params = steps.n_params(student)
    student_id = record_model(
        ctx,
        ModelRole.STUDENT,
        spec.student,
        save,
        dim=student.dim,
        n_params=params,
        id_field="student_model_id",
        job_update={
            "status": JobStatus.SUCCEEDED,
            "phase": JobPhase.INDEX,
            "progress": 1.0,
            "error": None,
            "finished_at": utcnow(),
        },
        lost_while="publishing its student",
        dataset_id=spec.dataset_id,
        method=spec.method,
        metrics=metrics,
        teacher_metrics=teacher_metrics,
        teacher_model_id=teacher.id,
        compression_ratio=teacher.n_params / params,
        latency=latency,
    )
    log.info(
        "job %s succeeded: student %s ndcg@10=%.4f (teacher %.4f)",
        ctx.job_id,
        student_id,
        metrics.get("ndcg@10", float("nan")),
        teacher_metrics.get("ndcg@10", float("nan")),
    )
