"""Fits have a status (running, completed, failed), a reason, and an owner with a heartbeat.

Revision ID: 0005_fit_status
Revises: 0004_experiment_imported_from
Create Date: 2026-12-02 06:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_fit_status"
down_revision: str | None = "0004_experiment_imported_from"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("fits", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("status", sa.String(length=16), server_default="completed", nullable=False)
        )
        batch_op.add_column(sa.Column("reason", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("stage", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("owner", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("started_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
    # Every fit stored before this revision was stored once done: completed when it was fitted.
    op.execute("UPDATE fits SET started_at = fitted_at, finished_at = fitted_at")


def downgrade() -> None:
    # Older code reads every fit as completed: drop the ones that are not.
    op.execute("DELETE FROM fits WHERE status != 'completed'")
    with op.batch_alter_table("fits", schema=None) as batch_op:
        batch_op.drop_column("heartbeat_at")
        batch_op.drop_column("finished_at")
        batch_op.drop_column("started_at")
        batch_op.drop_column("owner")
        batch_op.drop_column("stage")
        batch_op.drop_column("reason")
        batch_op.drop_column("status")
