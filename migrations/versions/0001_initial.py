"""Initial schema: datasets, jobs, models, activations.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("original_filename", sa.String(255), nullable=False),
        sa.Column("path", sa.String(500), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("user_col", sa.String(200), nullable=False),
        sa.Column("item_col", sa.String(200), nullable=False),
        sa.Column("rating_col", sa.String(200), nullable=True),
        sa.Column("timestamp_col", sa.String(200), nullable=True),
        sa.Column("rating_threshold", sa.Float(), nullable=True),
        sa.Column("n_users", sa.Integer(), nullable=False),
        sa.Column("n_items", sa.Integer(), nullable=False),
        sa.Column("n_interactions", sa.BigInteger(), nullable=False),
        sa.Column("density", sa.Float(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_datasets"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("dataset_id", sa.String(32), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("phase", sa.String(16), nullable=True),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("teacher", sa.JSON(), nullable=True),
        sa.Column("teacher_model_id", sa.String(32), nullable=True),
        sa.Column("student", sa.JSON(), nullable=False),
        sa.Column("hyperparameters", sa.JSON(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("split", sa.JSON(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("max_epochs", sa.Integer(), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("history", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(200), nullable=True),
        sa.Column("heartbeat_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("student_model_id", sa.String(32), nullable=True),
        sa.Column("result_teacher_model_id", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name="fk_jobs_dataset_id_datasets", ondelete="SET NULL"
        ),
    )
    op.create_index("ix_jobs_dataset_id", "jobs", ["dataset_id"])
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_table(
        "models",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=True),
        sa.Column("dataset_id", sa.String(32), nullable=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("model_name", sa.String(32), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(16), nullable=True),
        sa.Column("artifact_path", sa.String(500), nullable=False),
        sa.Column("n_params", sa.BigInteger(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("teacher_metrics", sa.JSON(), nullable=True),
        sa.Column("teacher_model_id", sa.String(32), nullable=True),
        sa.Column("compression_ratio", sa.Float(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_models"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_models_job_id_jobs"),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name="fk_models_dataset_id_datasets", ondelete="SET NULL"
        ),
    )
    op.create_index("ix_models_job_id", "models", ["job_id"])
    op.create_index("ix_models_dataset_id", "models", ["dataset_id"])
    # jobs <-> models reference each other: the jobs -> models keys are added once both tables exist
    # (batch mode rebuilds the table on SQLite, which cannot ALTER a constraint in).
    with op.batch_alter_table("jobs") as batch:
        for col in ("teacher_model_id", "student_model_id", "result_teacher_model_id"):
            batch.create_foreign_key(f"fk_jobs_{col}_models", "models", [col], ["id"])
    op.create_table(
        "activations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_id", sa.String(32), nullable=False),
        sa.Column("previous_model_id", sa.String(32), nullable=True),
        sa.Column("activated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_activations"),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name="fk_activations_model_id_models"),
    )
    op.create_index("ix_activations_model_id", "activations", ["model_id"])


def downgrade() -> None:
    op.drop_table("activations")
    with op.batch_alter_table("jobs") as batch:
        for col in ("teacher_model_id", "student_model_id", "result_teacher_model_id"):
            batch.drop_constraint(f"fk_jobs_{col}_models", type_="foreignkey")
    op.drop_table("models")
    op.drop_table("jobs")
    op.drop_table("datasets")
