"""Datasets remember the column delimiter they were uploaded with (``sep``), so jobs read them the same way.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: rows uploaded before this revision used the format's default delimiter.
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("sep", sa.String(8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("sep")
