"""Experiments remember when their objective was last edited, so fits made before it are
known to be fitted on another objective.

Revision ID: 0006_objective_changed_at
Revises: 0005_fit_status
Create Date: 2026-12-02 15:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_objective_changed_at"
down_revision: str | None = "0005_fit_status"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("objective_changed_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    # Not in batch mode: SQLite would copy the table and its drop would cascade to the runs and
    # fits; SQLite 3.35+ and Postgres drop a plain column in place.
    op.drop_column("experiments", "objective_changed_at")
