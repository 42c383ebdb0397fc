"""Alembic environment. It runs on the connection that ``service.store.schema`` hands it, which
already holds the migration lock, so replicas starting together migrate once."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from service.store.models import Base

config = context.config


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
        if connection.dialect.name == "sqlite":
            # service.store.schema turns enforcement off for batch copies (see there): a
            # revision that left a dangling reference fails here and is rolled back.
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
            if broken:
                raise RuntimeError(f"the migration broke {len(broken)} foreign keys: {broken[:5]}")


connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through service.store.schema, which provides a connection")
run_migrations(connection)
