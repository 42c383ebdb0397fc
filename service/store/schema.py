"""Schema migrations configured from code, so they work from an installed wheel.

``upgrade`` takes a lock first: a Postgres advisory lock, or a lock file beside the SQLite file,
so that several replicas starting at once apply each revision exactly once.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from filelock import FileLock
from sqlalchemy import Connection, Engine, text

import migrations

__all__ = ["alembic_config", "current_revision", "head_revision", "upgrade"]

# pg_advisory_lock key: an arbitrary constant. Every replica, old and new, must take the same
# lock to be serialised with the others, so it never changes.
_LOCK_KEY = 0x2F1B6C3E5A7D9041


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _sqlite_lock(engine: Engine) -> AbstractContextManager[object]:
    """SQLite is a local file, so a lock file beside it serialises every process on the host.

    The database's own locks are not enough: a process switching a new file to WAL mode and
    another reading the schema can each wait on the other until the busy timeout.
    """
    database = engine.url.database
    if not database or database == ":memory:":
        return nullcontext()
    return FileLock(f"{database}.migrate.lock")


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Bring the schema to ``revision`` under the migration lock; return the revision reached."""
    if engine.dialect.name != "postgresql":
        with _sqlite_lock(engine), engine.connect() as connection:
            command.upgrade(alembic_config(connection), revision)
            connection.commit()
            return current_revision(connection)
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _LOCK_KEY})
        connection.commit()
        try:
            command.upgrade(alembic_config(connection), revision)
            connection.commit()
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _LOCK_KEY})
            connection.commit()
        return current_revision(connection)
