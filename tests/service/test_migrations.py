"""Schema migrations: from empty, from every earlier revision, concurrently, and /readyz."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, make_url, text

from mixopt.settings import Settings
from service.main import create_app
from service.store import SqlStore, schema
from service.store.models import Base
from service.store.sql import make_engine
from tests.conftest import PG_SERVER

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables at all."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    name = f"mixopt_empty_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_SERVER, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(PG_SERVER).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def revisions() -> list[str]:
    """Every revision, oldest first."""
    script = ScriptDirectory.from_config(schema.alembic_config())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def test_upgrade_from_empty_creates_every_table(empty_database: str) -> None:
    engine = make_engine(empty_database)
    assert schema.upgrade(engine) == schema.head_revision()
    tables = set(inspect(engine).get_table_names())
    assert {t.name for t in Base.metadata.sorted_tables} <= tables
    SqlStore(engine).check_ready()
    engine.dispose()


@pytest.mark.parametrize("start", revisions())
def test_upgrade_from_each_earlier_revision_reaches_head(empty_database: str, start: str) -> None:
    engine = make_engine(empty_database)
    schema.upgrade(engine, start)
    assert schema.upgrade(engine) == schema.head_revision()
    SqlStore(engine).check_ready()
    engine.dispose()


def test_models_match_the_migrations(empty_database: str) -> None:
    """A model change without a new revision is caught here, not in production."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = make_engine(empty_database)
    schema.upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_replicas_upgrading_together_migrate_once(empty_database: str) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def replica() -> None:
        engine = make_engine(empty_database)
        try:
            barrier.wait()
            schema.upgrade(engine)
        except BaseException as exc:
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=replica) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    engine = make_engine(empty_database)
    SqlStore(engine).check_ready()
    engine.dispose()


def test_readyz_fails_until_the_schema_is_at_head(empty_database: str) -> None:
    engine = make_engine(empty_database)
    store = SqlStore(engine)
    with TestClient(create_app(Settings(), store)) as client:
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.headers["content-type"] == "application/problem+json"
        assert not_ready.json()["status"] == 503
        schema.upgrade(engine)
        assert client.get("/readyz").status_code == 200
    engine.dispose()


def test_db_upgrade_command_works_from_the_installed_package(empty_database: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mixopt.cli", "db", "upgrade", "--database-url", empty_database],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert done.returncode == 0, done.stderr
    assert schema.head_revision() in done.stdout
