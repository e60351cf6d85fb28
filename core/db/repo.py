"""Repository functions: the only SQL the service runs (datasets, jobs, models, activations)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, case, func, or_, select, update
from sqlalchemy.orm import Session

from core.config import FINAL_STATUSES, JobStatus, ModelRole
from core.db.models import Activation, Dataset, Job, Model, utcnow

ACTIVE_STATUSES = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
JOB_STATUSES = tuple(s.value for s in JobStatus)
R = TypeVar("R", Dataset, Job, Model)


class NotFoundError(LookupError):
    """An id names no row; ``kind`` is the table's singular (dataset, job, model)."""

    def __init__(self, kind: str, id_: str) -> None:
        super().__init__(f"unknown {kind} id: {id_!r}")
        self.kind = kind
        self.id = id_


class ConflictError(RuntimeError):
    """The request contradicts the current state (e.g. deleting a dataset a job is using)."""


# ---------------------------------------------------------------- shared


def _insert(session: Session, row: R) -> R:
    """Add a row and flush so its generated id and defaults are set."""
    session.add(row)
    session.flush()
    return row


def _get(session: Session, cls: type[R], kind: str, id_: str) -> R:
    row = session.get(cls, id_)
    if row is None:
        raise NotFoundError(kind, id_)
    return row


# ---------------------------------------------------------------- datasets


def create_dataset(session: Session, **fields: Any) -> Dataset:
    """Insert a dataset row (fields as in ``Dataset``) and flush so its id is set."""
    return _insert(session, Dataset(**fields))


def get_dataset(session: Session, dataset_id: str) -> Dataset:
    return _get(session, Dataset, "dataset", dataset_id)


def list_datasets(session: Session, limit: int = 100, offset: int = 0) -> Sequence[Dataset]:
    stmt = select(Dataset).order_by(Dataset.created_at.desc(), Dataset.id).limit(limit).offset(offset)
    return session.scalars(stmt).all()


def existing_dataset_ids(session: Session, dataset_ids: Sequence[str]) -> set[str]:
    """Which of ``dataset_ids`` have a row."""
    found: set[str] = set()
    for i in range(0, len(dataset_ids), 500):  # SQLite caps the parameters of one statement
        batch = list(dataset_ids[i : i + 500])
        found.update(session.scalars(select(Dataset.id).where(Dataset.id.in_(batch))))
    return found


def delete_dataset(session: Session, dataset_id: str) -> Dataset:
    """Delete the row (the caller removes its files); refused while a queued or running job uses it.

    Finished jobs and the models trained on the dataset are kept, their ``dataset_id`` set to NULL.
    """
    row = get_dataset(session, dataset_id)
    active = session.scalars(
        select(Job.id).where(Job.dataset_id == dataset_id, Job.status.in_(ACTIVE_STATUSES)).limit(1)
    ).first()
    if active is not None:
        raise ConflictError(f"dataset {dataset_id} is used by job {active}, which is still {ACTIVE_STATUSES}")
    session.execute(update(Job).where(Job.dataset_id == dataset_id).values(dataset_id=None))
    session.execute(update(Model).where(Model.dataset_id == dataset_id).values(dataset_id=None))
    session.delete(row)
    session.flush()
    return row


# ---------------------------------------------------------------- jobs


def create_job(session: Session, **fields: Any) -> Job:
    """Insert a queued job row (fields as in ``Job``) and flush so its id is set."""
    fields.setdefault("status", JobStatus.QUEUED)
    return _insert(session, Job(**fields))


def get_job(session: Session, job_id: str) -> Job:
    return _get(session, Job, "job", job_id)


def list_jobs(
    session: Session, status: str | None = None, limit: int = 100, offset: int = 0
) -> Sequence[Job]:
    if status is not None and status not in JOB_STATUSES:
        raise ValueError(f"status must be one of {JOB_STATUSES}, got {status!r}")
    stmt = select(Job).order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    return session.scalars(stmt).all()


def count_jobs_by_status(session: Session) -> dict[str, int]:
    """{status: count} with every status present (zeros included), for metrics."""
    counts = dict.fromkeys(JOB_STATUSES, 0)
    for status, n in session.execute(select(Job.status, func.count()).group_by(Job.status)):
        counts[status] = int(n)
    return counts


def request_cancel(session: Session, job_id: str) -> Job:
    """Cancel a queued job at once; flag a running one (its worker stops within one epoch)."""
    job = get_job(session, job_id)
    if job.status in FINAL_STATUSES:
        raise ConflictError(f"job {job_id} is already {job.status}")
    now = utcnow()
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.CANCELLED, cancel_requested=True, finished_at=now)
    )
    if res.rowcount == 0:  # type: ignore[attr-defined]
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
    session.flush()
    session.refresh(job)
    return job


def claim_job(
    session: Session, job_id: str, worker_id: str, lease_s: float, max_crashes: int | None = None
) -> bool:
    """Atomically take a job for ``worker_id``: queued, or running with a heartbeat older than the lease.

    Taking over a running job counts a crash of its previous run; with ``max_crashes`` a job whose count
    would reach it is not taken (recovery fails it, see ``recover_jobs``). One UPDATE decides, so two workers
    can never both win; the caller commits.
    """
    now = utcnow()
    cutoff = now - timedelta(seconds=lease_s)
    stale = or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff)
    takeover = (Job.status == JobStatus.RUNNING) & stale
    if max_crashes is not None:
        takeover = takeover & (Job.crashes + 1 < max_crashes)
    res = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.cancel_requested.is_(False),
            or_(Job.status == JobStatus.QUEUED, takeover),
        )
        .values(
            status=JobStatus.RUNNING,
            worker_id=worker_id,
            heartbeat_at=now,
            attempts=Job.attempts + 1,
            crashes=Job.crashes + case((Job.status == JobStatus.RUNNING, 1), else_=0),
            started_at=func.coalesce(Job.started_at, now),
            error=None,
        )
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1  # type: ignore[attr-defined]


def heartbeat(session: Session, job_id: str, worker_id: str) -> bool:
    """Refresh the lease; False when the job is no longer this worker's running job."""
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == JobStatus.RUNNING)
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1  # type: ignore[attr-defined]


def update_owned_job(session: Session, job_id: str, worker_id: str, **values: Any) -> bool:
    """Write ``values`` only while ``worker_id`` still owns the running job; False if it lost it."""
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == JobStatus.RUNNING)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1  # type: ignore[attr-defined]


def _stale(lease_s: float) -> ColumnElement[bool]:
    """A running job's lease has lapsed: no heartbeat for ``lease_s`` seconds."""
    cutoff = utcnow() - timedelta(seconds=lease_s)
    return or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff)


def _move(session: Session, job_id: str, condition: ColumnElement[bool], **values: Any) -> bool:
    """One conditional UPDATE of one job: True when ``condition`` still held and the row changed."""
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, condition)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1  # type: ignore[attr-defined]


def _cancelled_values() -> dict[str, Any]:
    return {"status": JobStatus.CANCELLED, "worker_id": None, "finished_at": utcnow()}


def _crashed_values(max_crashes: int) -> dict[str, Any]:
    return {
        "status": JobStatus.FAILED,
        "worker_id": None,
        "finished_at": utcnow(),
        "error": f"the worker running this job stopped without finishing it {max_crashes} times (killed, or out "
        "of memory: a smaller m, batch_size or data set needs less); not retried (RECDISTILL_JOB_MAX_CRASHES)",
    }


# A queued job never carries the flag on purpose (request_cancel ends a queued job at once): it got there by
# a cancel racing with a worker handing the job back. Claims refuse it, so only this resolves it.
_PENDING_CANCEL_QUEUED = (Job.status == JobStatus.QUEUED) & Job.cancel_requested.is_(True)


def cancel_abandoned(session: Session, job_id: str, lease_s: float) -> bool:
    """Honour a cancel nobody is left to act on: a job with ``cancel_requested`` that is queued, or running on
    a lapsed lease, ends ``cancelled``. Without this such a job stays queued for ever (claims refuse it because
    of the flag). The caller commits and removes the job's training state."""
    stale_running = (Job.status == JobStatus.RUNNING) & _stale(lease_s) & Job.cancel_requested.is_(True)
    return _move(session, job_id, or_(_PENDING_CANCEL_QUEUED, stale_running), **_cancelled_values())


@dataclass
class Recovery:
    """What ``recover_jobs`` did: jobs put back in the queue, cancels honoured, jobs failed for crashing their
    workers too often, and jobs already queued."""

    requeued: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)

    @property
    def to_enqueue(self) -> list[str]:
        """Jobs that need a (new) queue message: the requeued ones, then those already queued."""
        return self.requeued + [j for j in self.queued if j not in self.requeued]


def recover_jobs(
    session: Session,
    *,
    lease_s: float | None = None,
    worker_ids: Sequence[str] = (),
    include_queued: bool = False,
    max_crashes: int | None = None,
) -> Recovery:
    """Take running jobs away from workers that are gone and resolve them; the one recovery state machine.

    A running job counts as abandoned when its heartbeat is older than ``lease_s`` (the sweeper) or its
    worker is one of ``worker_ids`` (known dead: the server saw its local worker exit, or the worker hands
    the job back itself). An abandoned job goes back to ``queued``, unless a cancel was requested: then it
    ends ``cancelled`` (the caller drops its training state). With ``max_crashes`` (the run crashed: not a
    worker's own hand-back) the job's crash count grows by one, and a job that reaches it ends ``failed``
    with an error saying so (the caller drops its training state): a job that kills every worker that runs
    it, out of memory say, would otherwise be re-queued for ever and hold the queue. Queued jobs with a
    pending cancel end ``cancelled`` too. Each job moves by conditional UPDATEs, so concurrent sweepers never
    handle it twice. With ``include_queued`` the ids of jobs already queued are returned too (a worker's
    start-up: their message may have been lost).
    """
    abandoned: list[ColumnElement[bool]] = []
    if lease_s is not None:
        abandoned.append(_stale(lease_s))
    if worker_ids:
        abandoned.append(Job.worker_id.in_(list(worker_ids)))
    rec = Recovery()
    if abandoned:
        running = (Job.status == JobStatus.RUNNING) & or_(*abandoned)
        live = running & Job.cancel_requested.is_(False)
        crash = {} if max_crashes is None else {"crashes": Job.crashes + 1}
        for job_id in session.scalars(select(Job.id).where(running).order_by(Job.created_at)).all():
            if _move(session, job_id, running & Job.cancel_requested.is_(True), **_cancelled_values()):
                rec.cancelled.append(job_id)
            elif max_crashes is not None and _move(
                session, job_id, live & (Job.crashes + 1 >= max_crashes), **crash, **_crashed_values(max_crashes)
            ):
                rec.failed.append(job_id)
            elif _move(session, job_id, live, status=JobStatus.QUEUED, worker_id=None, **crash):
                rec.requeued.append(job_id)
            # else: another sweeper moved it, or a cancel landed in between (the next pass cancels it)
    for job_id in session.scalars(select(Job.id).where(_PENDING_CANCEL_QUEUED)).all():
        if _move(session, job_id, _PENDING_CANCEL_QUEUED, **_cancelled_values()):
            rec.cancelled.append(job_id)
    if include_queued:
        rec.queued = list(
            session.scalars(select(Job.id).where(Job.status == JobStatus.QUEUED).order_by(Job.created_at)).all()
        )
    return rec


def final_job_ids(session: Session, job_ids: Sequence[str]) -> set[str]:
    """Which of ``job_ids`` are finished or have no row: their training state will never be used again."""
    live = set(
        session.scalars(
            select(Job.id).where(Job.id.in_(list(job_ids)), Job.status.not_in(FINAL_STATUSES))
        ).all()
    )
    return {j for j in job_ids if j not in live}


# ---------------------------------------------------------------- models and activations


def create_model(session: Session, **fields: Any) -> Model:
    """Insert a model row (fields as in ``Model``) and flush so its id is set."""
    return _insert(session, Model(**fields))


def get_model(session: Session, model_id: str) -> Model:
    return _get(session, Model, "model", model_id)


def model_exists(session: Session, model_id: str) -> bool:
    return session.get(Model, model_id) is not None


def find_model(session: Session, model_id: str) -> Model | None:
    return session.get(Model, model_id)


def find_baseline_student(session: Session, student: Model, limit: int = 50) -> Model | None:
    """The newest student trained alone (method none) of a succeeded job with ``student``'s data set, student
    model and dim, seed and split: the "student alone" its gap closed is measured from. None when none is."""
    job = session.get(Job, student.job_id) if student.job_id else None
    if job is None or student.dataset_id is None:
        return None
    stmt = (
        select(Model, Job)
        .join(Job, Model.job_id == Job.id)
        .where(
            Model.role == ModelRole.STUDENT,
            Model.method == "none",
            Model.dataset_id == student.dataset_id,
            Model.model_name == student.model_name,
            Model.dim == student.dim,
            Model.id != student.id,
            Job.status == JobStatus.SUCCEEDED,
            Job.seed == job.seed,
        )
        .order_by(Model.created_at.desc(), Model.id)
        .limit(limit)
    )
    for model, other in session.execute(stmt).all():
        if other.split == job.split:  # JSON: compared here, the same way on SQLite and Postgres
            return model
    return None


def list_models(
    session: Session, role: str | None = None, job_id: str | None = None, limit: int = 100, offset: int = 0
) -> Sequence[Model]:
    stmt = select(Model).order_by(Model.created_at.desc(), Model.id).limit(limit).offset(offset)
    if role is not None:
        stmt = stmt.where(Model.role == role)
    if job_id is not None:
        stmt = stmt.where(Model.job_id == job_id)
    return session.scalars(stmt).all()


def active_activation(session: Session) -> Activation | None:
    """The newest activation row (its ``model_id`` is the active model), or None."""
    stmt = select(Activation).order_by(Activation.id.desc()).limit(1)
    return session.scalars(stmt).first()


def newest_activation_ids(session: Session) -> tuple[int, str] | None:
    """(id, model_id) of the newest activation, or None: two columns, for a poll that runs every few seconds."""
    row = session.execute(select(Activation.id, Activation.model_id).order_by(Activation.id.desc()).limit(1)).first()
    return None if row is None else (int(row[0]), str(row[1]))


def active_model(session: Session) -> Model | None:
    act = active_activation(session)
    return None if act is None else session.get(Model, act.model_id)


def activate_model(session: Session, model_id: str) -> Activation:
    """Record ``model_id`` as active (the previous one is kept for rollback).

    Refused for teachers (only students carry a serving bundle) and for models whose job did not succeed.
    """
    model = get_model(session, model_id)
    if model.role != ModelRole.STUDENT:
        raise ConflictError(f"model {model_id} is a {model.role}; only student models can be activated")
    if model.job_id is not None:
        job = session.get(Job, model.job_id)
        if job is not None and job.status != JobStatus.SUCCEEDED:
            raise ConflictError(f"model {model_id}'s job {job.id} is {job.status}, not succeeded")
    current = active_activation(session)
    row = Activation(model_id=model_id, previous_model_id=None if current is None else current.model_id)
    session.add(row)
    session.flush()
    return row


def list_activations(session: Session, limit: int = 50) -> Sequence[Activation]:
    return session.scalars(select(Activation).order_by(Activation.id.desc()).limit(limit)).all()
