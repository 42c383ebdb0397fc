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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Column,
    MetaData,
    Table,
    create_engine,
    func,
    insert,
    inspect,
    make_url,
    select,
    text,
)
from sqlalchemy.sql import sqltypes

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


def _insert_old_experiment(conn: Any, now: Any) -> int:
    """An experiment row with only the columns every revision has (the models' own insert
    would name columns an older revision lacks)."""
    experiment_id: int = conn.execute(
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
    return experiment_id


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


# Values that carry meaning for the code (and could for a data migration), cycled over the rows;
# every other column gets a distinct value of its type.
MEANINGFUL: dict[tuple[str, str], list[Any]] = {
    ("experiments", "mode"): ["offline", "online"],
    ("experiments", "status"): ["active", "archived"],
    ("runs", "status"): ["pending", "running", "completed", "failed"],
    ("api_tokens", "scope"): ["read", "write", "admin"],
}
ROWS_PER_TABLE = 2


class RowMaker:
    """Representative rows for whatever tables a revision has, from their reflected columns."""

    def __init__(self) -> None:
        self.counter = 0

    def value(self, table: Table, column: Column[Any], index: int) -> Any:
        self.counter += 1
        n = self.counter
        meaningful = MEANINGFUL.get((table.name, column.name))
        kind = column.type
        if meaningful is not None:
            return meaningful[index % len(meaningful)]
        if isinstance(kind, sqltypes.Boolean):
            return n % 2 == 1
        if isinstance(kind, sqltypes.Integer):
            return n
        if isinstance(kind, sqltypes.Float):
            return n + 0.25  # exact in binary: compared with ==
        if isinstance(kind, sqltypes.DateTime):
            return datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC) + timedelta(seconds=n)
        if isinstance(kind, sqltypes.JSON):
            return {"n": n, "list": [1.5, "x", None], "nested": {"ok": True}}
        if isinstance(kind, sqltypes.LargeBinary):
            return bytes([0, 255, n % 256]) + b"blob"
        if isinstance(kind, sqltypes.String):
            return f"s{n}"  # distinct (unique constraints) and short (String(16) columns)
        pytest.fail(f"no representative value for {table.name}.{column.name} ({kind!r}): add one")

    def rows(self, table: Table, parents: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
        made = []
        for index in range(ROWS_PER_TABLE):
            row: dict[str, Any] = {}
            for column in table.columns:
                if _database_assigned(table, column):
                    continue
                references = [fk.column for fk in column.foreign_keys]
                if references:  # a row of the parent inserted at this revision, one each
                    parent_rows = parents[references[0].table.name]
                    row[column.name] = parent_rows[index % len(parent_rows)][references[0].name]
                else:
                    row[column.name] = self.value(table, column, index)
            made.append(row)
        return made


def _database_assigned(table: Table, column: Column[Any]) -> bool:
    """A lone integer primary key without a foreign key: its value comes from the database."""
    primary = list(table.primary_key.columns)
    return (
        primary == [column]
        and isinstance(column.type, sqltypes.Integer)
        and not column.foreign_keys
    )


def _comparable(value: Any) -> Any:
    if isinstance(value, datetime):  # SQLite hands back naive UTC, Postgres an aware time
        return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, memoryview):
        return bytes(value)
    return value


def test_upgrading_keeps_every_row_written_at_every_earlier_revision(empty_database: str) -> None:
    """Step by step from base: at each revision, rows in every table it has (plain SQL on its
    reflected tables, so the test knows no revision); at head, every row is there unchanged.

    A revision whose data migration changes stored values on purpose fails here until this test
    is taught the change: that is the point."""
    engine = make_engine(empty_database)
    maker = RowMaker()
    written: list[tuple[str, str, dict[str, Any]]] = []  # (revision, table, row with its key)
    for revision in revisions()[:-1]:  # every revision but head, found by Alembic
        assert schema.upgrade(engine, revision) == revision
        tables = MetaData()
        tables.reflect(bind=engine)
        inserted: dict[str, list[dict[str, Any]]] = {}
        with engine.begin() as conn:
            for table in tables.sorted_tables:
                if table.name == "alembic_version":
                    continue
                rows = maker.rows(table, inserted)
                keys = conn.execute(
                    insert(table).returning(
                        *table.primary_key.columns, sort_by_parameter_order=True
                    ),
                    rows,
                ).all()
                for row, key in zip(rows, keys, strict=True):
                    row.update(key._asdict())
                    written.append((revision, table.name, row))
                inserted[table.name] = rows
        assert set(inserted) >= {"experiments", "runs", "metric_points", "api_tokens", "fits"}

    schema.upgrade(engine)
    tables = MetaData()
    tables.reflect(bind=engine)
    with engine.connect() as conn:
        # Counted first: SQLite reuses the ids of deleted rows, so a lost row may look changed.
        for name in {n for _, n, _ in written}:
            count = conn.execute(select(func.count()).select_from(tables.tables[name])).scalar()
            expected = sum(1 for _, n, _ in written if n == name)
            assert count == expected, f"{name} holds {count} rows, not the {expected} written"
        stored_rows = {
            name: {
                tuple(r[c.name] for c in table.primary_key.columns): r
                for r in conn.execute(select(table)).mappings()
            }
            for name, table in tables.tables.items()
        }
        for revision, name, row in written:
            primary = tables.tables[name].primary_key.columns
            stored = stored_rows[name].get(tuple(row[c.name] for c in primary))
            assert stored is not None, f"{name} row {row} written at {revision} is gone"
            for column, value in row.items():
                assert _comparable(stored[column]) == _comparable(value), (
                    f"{name}.{column} written at {revision} changed"
                )
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
        experiment_id = _insert_old_experiment(conn, now)
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
    assert schema.downgrade(engine, "0002_weight_versions_superseded") == (
        "0002_weight_versions_superseded"
    )
    with engine.connect() as conn:
        blobs = conn.execute(text("SELECT model_blob FROM fits ORDER BY id")).scalars().all()
    assert [None if b is None else bytes(b) for b in blobs] == [b"\x80pickled", None]
    engine.dispose()


def test_fits_stored_before_fit_status_existed_read_back_completed(empty_database: str) -> None:
    engine = make_engine(empty_database)
    schema.upgrade(engine, "0004_experiment_imported_from")
    now = utcnow()
    with engine.begin() as conn:
        experiment_id = _insert_old_experiment(conn, now)
        # Only the columns revision 0004 has.
        conn.execute(
            insert(FitRow).values(
                experiment_id=experiment_id,
                model="linear",
                requested="auto",
                n_runs=8,
                report={},
                recommendation={"weights": {}},
                fitted_at=now,
            )
        )
    schema.upgrade(engine)
    store = SqlStore(engine)
    latest = store.latest_fit(str(experiment_id))
    assert latest is not None
    fit = latest[0]
    assert (fit.status, fit.reason) == ("completed", None)
    assert fit.started_at == fit.finished_at == fit.fitted_at
    engine.dispose()


def test_downgrading_past_fit_status_drops_the_fits_that_never_completed(
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
    done = store.add_fit(experiment.id, NewFit("linear", "auto", 8, {}, None, None, None))
    store.start_fit(experiment.id, "auto", owner="a")
    failed = store.start_fit(experiment.id, "auto", owner="a")
    store.fail_fit(failed.id, "boom")
    with engine.connect() as conn:
        command.downgrade(schema.alembic_config(conn), "0004_experiment_imported_from")
        conn.commit()
        ids = conn.execute(text("SELECT id FROM fits ORDER BY id")).scalars().all()
    assert [str(i) for i in ids] == [done.id]
    engine.dispose()
