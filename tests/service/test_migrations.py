"""Schema migrations: from empty, from every earlier revision, concurrently, and /readyz."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, insert, inspect, make_url, select, text

from mixers.persistence import FIT_FORMAT
from mixopt.settings import Settings
from service.main import create_app
from service.store import NewExperiment, NewFit, SqlStore, StoredModel, schema
from service.store.models import Base, ExperimentRow, FitRow
from service.store.sql import make_engine, utcnow
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


def test_a_fit_model_stored_before_formats_existed_reads_back_as_pickle(
    empty_database: str,
) -> None:
    engine = make_engine(empty_database)
    schema.upgrade(engine, "0002_weight_versions_superseded")
    blob = pickle.dumps({"coefficients": [0.5, -1.25]})
    now = utcnow()
    fit = {"model": "linear", "requested": "auto", "n_runs": 8, "report": {}, "fitted_at": now}
    # Only the columns revision 0002 has: the models' own insert would name model_format.
    with engine.begin() as conn:
        experiment_id = conn.execute(
            insert(ExperimentRow)
            .values(
                name="old",
                mode="offline",
                method="regmix",
                domains=[],
                objective={},
                config={},
                status="active",
                created_at=now,
                updated_at=now,
            )
            .returning(ExperimentRow.id)
        ).scalar_one()
        conn.execute(insert(FitRow).values(experiment_id=experiment_id, model_blob=None, **fit))
        conn.execute(insert(FitRow).values(experiment_id=experiment_id, model_blob=blob, **fit))
    schema.upgrade(engine)
    with engine.connect() as conn:
        formats = conn.execute(select(FitRow.model_format).order_by(FitRow.id)).scalars().all()
    assert formats == [None, "pickle"]
    latest = SqlStore(engine).latest_fit(str(experiment_id))
    assert latest is not None
    assert latest[1] == StoredModel("pickle", blob)
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


def test_downgrading_past_model_formats_drops_the_models_older_code_cannot_read(
    empty_database: str,
) -> None:
    engine = make_engine(empty_database)
    schema.upgrade(engine)
    store = SqlStore(engine)
    experiment = store.create_experiment(
        NewExperiment(
            name="e", mode="offline", method="regmix", domains=[], objective={}, config={}
        )
    )
    for data, model_format in ((b"\x80pickled", "pickle"), (b"x\x9cdata", FIT_FORMAT)):
        store.add_fit(experiment.id, NewFit("linear", "auto", 8, {}, None, data, model_format))
    with engine.connect() as conn:
        command.downgrade(schema.alembic_config(conn), "0002_weight_versions_superseded")
        conn.commit()
        blobs = conn.execute(text("SELECT model_blob FROM fits ORDER BY id")).scalars().all()
    assert [None if b is None else bytes(b) for b in blobs] == [b"\x80pickled", None]
    engine.dispose()
