"""Experiments remember the archive they were imported from, so an import happens once.

Revision ID: 0004_experiment_imported_from
Revises: 0003_fit_model_format
Create Date: 2026-12-02 05:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_experiment_imported_from"
down_revision: str | None = "0003_fit_model_format"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("imported_from", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("import_digest", sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(
            batch_op.f("uq_experiments_imported_from"), ["imported_from"]
        )


def downgrade() -> None:
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_experiments_imported_from"), type_="unique")
        batch_op.drop_column("import_digest")
        batch_op.drop_column("imported_from")
