"""Schema migrations configured from code, so they work from an installed wheel.

``upgrade`` takes a lock first: a Postgres advisory lock, or a lock file beside the SQLite file,
so that several replicas starting at once apply each revision exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from filelock import FileLock
from sqlalchemy import Connection, Engine, text

import migrations

__all__ = ["alembic_config", "current_revision", "downgrade", "head_revision", "upgrade"]

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


@contextmanager
def _foreign_keys_off(connection: Connection) -> Iterator[None]:
    """SQLite: no foreign key enforcement while migrating (the migration checks them at its end).

    Batch mode alters a table by copying it, dropping the original and renaming the copy. With
    enforcement on, dropping ``experiments`` is a DELETE that cascades: an upgrade that only adds
    a column to experiments (0004 does) deleted every run, metric point, fit and weights version.
    """
    raw = connection.connection.driver_connection
    assert raw is not None
    # The pragma does nothing inside a transaction, so it goes to the driver before any begins.
    raw.execute("PRAGMA foreign_keys=OFF")
    if raw.execute("PRAGMA foreign_keys").fetchone()[0] != 0:
        raise RuntimeError("could not turn SQLite foreign keys off to migrate safely")
    try:
        yield
    finally:
        connection.rollback()  # nothing left open, or the pragma below would do nothing
        raw.execute("PRAGMA foreign_keys=ON")


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Bring the schema to ``revision`` under the migration lock; return the revision reached."""
    if engine.dialect.name != "postgresql":
        with _sqlite_lock(engine), engine.connect() as connection:
            with _foreign_keys_off(connection):
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


def downgrade(engine: Engine, revision: str) -> str | None:
    """Take the schema back to ``revision`` (an operator's rollback; no lock: one process does
    it, with the service stopped); return the revision reached."""
    with engine.connect() as connection:
        guard = (
            _foreign_keys_off(connection) if engine.dialect.name != "postgresql" else nullcontext()
        )
        with guard:
            command.downgrade(alembic_config(connection), revision)
            connection.commit()
        return current_revision(connection)
