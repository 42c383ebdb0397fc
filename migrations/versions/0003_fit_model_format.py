"""Fits name the format of their stored model; the models stored so far are pickles.

Revision ID: 0003_fit_model_format
Revises: 0002_weight_versions_superseded
Create Date: 2026-12-01 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_fit_model_format"
down_revision: str | None = "0002_weight_versions_superseded"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("fits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model_format", sa.String(length=64), nullable=True))
    # Every model stored before this revision was written with pickle.dumps. The bytes stay as
    # they are: a migration never loads them.
    op.execute("UPDATE fits SET model_format = 'pickle' WHERE model_blob IS NOT NULL")


def downgrade() -> None:
    # Older code unpickles every stored model: drop the ones that are not pickles (their fits
    # keep their report and recommendation; predicting needs a new fit).
    op.execute(
        "UPDATE fits SET model_blob = NULL WHERE model_format IS NOT NULL "
        "AND model_format != 'pickle'"
    )
    with op.batch_alter_table("fits", schema=None) as batch_op:
        batch_op.drop_column("model_format")
