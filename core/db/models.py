"""SQLAlchemy 2 tables: datasets, jobs, models and activations (no blobs: files live in the artifact store)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from core.config import JobStatus


def new_id() -> str:
    """A fresh 32-character uuid4 hex id."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    """Timezone-aware now (UTC); stored as timestamptz on Postgres."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored in UTC and always read back timezone-aware (SQLite keeps no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base; ``Base.metadata`` is what Alembic compares against."""

    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime()}


class Dataset(Base):
    """An uploaded interaction file and the column options it was validated with."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    original_filename: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(String(500))
    format: Mapped[str] = mapped_column(String(16))
    sep: Mapped[str | None] = mapped_column(String(8))  # column delimiter; None = the format's default
    user_col: Mapped[str] = mapped_column(String(200))
    item_col: Mapped[str] = mapped_column(String(200))
    rating_col: Mapped[str | None] = mapped_column(String(200))
    timestamp_col: Mapped[str | None] = mapped_column(String(200))
    rating_threshold: Mapped[float | None] = mapped_column(Float)
    n_users: Mapped[int] = mapped_column(Integer)
    n_items: Mapped[int] = mapped_column(Integer)
    n_interactions: Mapped[int] = mapped_column(BigInteger)
    density: Mapped[float] = mapped_column(Float)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    """A teacher → student distillation run; the source of truth for its status and progress."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value, index=True)
    phase: Mapped[str | None] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(16))
    teacher: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    teacher_model_id: Mapped[str | None] = mapped_column(ForeignKey("models.id", use_alter=True))
    student: Mapped[dict[str, Any]] = mapped_column(JSON)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    split: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    max_epochs: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    history: Mapped[list[Any]] = mapped_column(JSON, default=list)
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Runs that ended with the worker gone (no heartbeat, or its process seen dead): at the settings'
    # job_max_crashes the job fails instead of going back to the queue (a job that kills its worker).
    crashes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    worker_id: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    student_model_id: Mapped[str | None] = mapped_column(ForeignKey("models.id", use_alter=True))
    result_teacher_model_id: Mapped[str | None] = mapped_column(ForeignKey("models.id", use_alter=True))


class Model(Base):
    """A trained model (teacher or student) whose checkpoint lives at ``artifact_path``."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    model_name: Mapped[str] = mapped_column(String(32))
    dim: Mapped[int] = mapped_column(Integer)
    method: Mapped[str | None] = mapped_column(String(16))
    artifact_path: Mapped[str] = mapped_column(String(500))
    n_params: Mapped[int] = mapped_column(BigInteger)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    teacher_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    teacher_model_id: Mapped[str | None] = mapped_column(String(32))
    compression_ratio: Mapped[float | None] = mapped_column(Float)
    # Students: recommend latency of the student's and the teacher's index, measured at the end of the job
    # (core.jobs.steps.measure_latency); None for teachers and for models made before revision 0003.
    latency: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Activation(Base):
    """One activation of a served model; the newest row names the active model."""

    __tablename__ = "activations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    previous_model_id: Mapped[str | None] = mapped_column(String(32))
    activated_at: Mapped[datetime] = mapped_column(default=utcnow)
