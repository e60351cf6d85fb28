"""``/jobs``: validate and queue distillation jobs, list/inspect them, request cancellation."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse

from api.deps import PageLimit, PageOffset, SessionDep
from api.errors import Conflict, InvalidInput
from api.schemas import ID_PATTERN, JobCreate, JobPublic, JobsPublic, ModelReportPublic
from core.config import JobStatus, JobStatusName, ModelRole
from core.db import repo
from core.db.models import Job, utcnow
from core.jobs import memory
from core.report import model_report

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/jobs", tags=["jobs"])

JobId = Annotated[str, PathParam(pattern=ID_PATTERN, description="32-character hex job id.")]


def _check_teacher(session: SessionDep, body: JobCreate) -> None:
    """A reused teacher must be a teacher model of the same dataset, wider than the student."""
    if body.teacher_model_id is None:
        return
    teacher = repo.get_model(session, body.teacher_model_id)  # 404 naming the id
    if teacher.role != ModelRole.TEACHER:
        raise InvalidInput(f"teacher_model_id: model {teacher.id} is a {teacher.role}, not a teacher")
    if teacher.dataset_id != body.dataset_id:
        raise InvalidInput(
            f"teacher_model_id: model {teacher.id} was trained on dataset {teacher.dataset_id}, "
            f"not {body.dataset_id}"
        )
    if body.student.dim >= teacher.dim:
        raise InvalidInput(f"student.dim ({body.student.dim}) must be below the teacher's dim ({teacher.dim})")


@router.post("", status_code=201, response_model=JobPublic,
             responses={503: {"description": "The job was recorded as failed: the queue is unreachable."}})
def create_job(body: JobCreate, session: SessionDep, request: Request) -> JobPublic | JSONResponse:
    dataset = repo.get_dataset(session, body.dataset_id)  # 404 naming the id
    _check_teacher(session, body)
    try:  # refused now, not after its worker is killed for memory (core.jobs.memory)
        memory.check(body.spec(), dataset.n_users, dataset.n_items,
                     *memory.budget(request.app.state.settings.job_memory_mb))
    except memory.MemoryTooSmall as exc:
        raise InvalidInput(str(exc), code="job_too_large") from None
    except ValueError as exc:  # an EASE teacher above its catalogue limit
        raise InvalidInput(str(exc)) from None
    hp = body.hyperparameters
    job = repo.create_job(
        session, dataset_id=body.dataset_id, method=body.method,
        teacher=None if body.teacher is None else body.teacher.model_dump(),
        teacher_model_id=body.teacher_model_id, student=body.student.model_dump(), hyperparameters=hp,
        seed=body.seed, split={"mode": body.split.mode, "ratios": list(body.split.ratios)},
        max_epochs=int(hp.get("epochs", 0)),
    )
    session.commit()  # the row exists before the message, so a worker always finds it
    try:
        request.app.state.enqueue(job.id)
    except Exception as exc:
        # Never a lost job: it stays visible, failed with the reason.
        logger.exception("could not enqueue job %s", job.id)
        job.status, job.error, job.finished_at = JobStatus.FAILED, f"could not enqueue the job: {exc}", utcnow()
        session.commit()
        return JSONResponse(
            {"detail": f"job {job.id} could not be queued and was marked failed: {exc}", "code": "queue_unavailable",
             "job": JobPublic.model_validate(job).model_dump(mode="json")},
            status_code=503,
        )
    logger.info("queued job %s (%s, dataset %s)", job.id, body.method, body.dataset_id)
    return JobPublic.model_validate(job)


@router.get("", response_model=JobsPublic)
def list_jobs(
    session: SessionDep,
    status: Annotated[JobStatusName | None, Query(description="Only jobs with this status.")] = None,
    limit: PageLimit = 100,
    offset: PageOffset = 0,
) -> JobsPublic:
    rows = repo.list_jobs(session, status=status, limit=limit, offset=offset)
    return JobsPublic(data=[JobPublic.model_validate(r) for r in rows], count=len(rows))


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: JobId, session: SessionDep) -> JobPublic:
    job = repo.get_job(session, job_id)
    out = JobPublic.model_validate(job)
    if job.status == JobStatus.SUCCEEDED and job.student_model_id and repo.find_model(session, job.student_model_id):
        out.report = ModelReportPublic.model_validate(model_report(session, job.student_model_id))
    return out


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job_id: JobId, session: SessionDep) -> JobPublic:
    try:
        job: Job = repo.request_cancel(session, job_id)
    except repo.ConflictError as exc:
        raise Conflict(str(exc), code="job_finished") from None
    session.commit()
    return JobPublic.model_validate(job)
