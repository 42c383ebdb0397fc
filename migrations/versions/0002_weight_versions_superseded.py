"""Weight versions can be superseded by a resume; index them by step for ``?at_step=``.

Revision ID: 0002_weight_versions_superseded
Revises: 0001_initial
Create Date: 2026-11-23 14:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_weight_versions_superseded"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("weight_versions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("superseded", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.create_index("ix_weight_versions_run_step", ["run_id", "step"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("weight_versions", schema=None) as batch_op:
        batch_op.drop_index("ix_weight_versions_run_step")
        batch_op.drop_column("superseded")
