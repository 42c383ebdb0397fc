"""Shared fixtures. Every store-backed test runs against SQLite and against Postgres.

Postgres comes from ``MIXOPT_TEST_DATABASE_URL`` (default: the local server); each test session
creates a database of its own and drops it at the end, so parallel runs never collide.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import Engine

from mixopt.settings import Settings, normalise_database_url
from service.store import SqlStore, schema
from service.store.models import Base
from service.store.sql import make_engine

PG_SERVER = normalise_database_url(
    os.environ.get("MIXOPT_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
)
BACKENDS = ["sqlite", "postgres"]


class Clock:
    """Real UTC time plus an offset that tests advance (lease expiry without sleeping)."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh, migrated Postgres database for this test session."""
    name = f"mixopt_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_SERVER, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # pragma: no cover - environment problem, said plainly
        pytest.fail(f"Postgres at {PG_SERVER} is needed for the store tests: {exc}")
    url = make_url(PG_SERVER).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    schema.upgrade(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "mixopt.db"
    engine = make_engine(f"sqlite:///{path}")
    schema.upgrade(engine)
    engine.dispose()
    return path


def _truncate(url: str) -> None:
    engine = create_engine(url)
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """A migrated, empty database of each backend."""
    if request.param == "sqlite":
        path = tmp_path / "mixopt.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("pg_database")
    _truncate(url)
    return url


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url, pool_size=20)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine, clock: Clock) -> Iterator[SqlStore]:
    # With the weights cache, as the service runs (it is used on Postgres only).
    store = SqlStore(engine, clock=clock, weights_cache=True)
    yield store
    store.close()


@dataclass
class Tokens:
    read: str
    write: str
    admin: str

    def header(self, scope: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {getattr(self, scope)}"}


@pytest.fixture
def tokens(store: SqlStore) -> Tokens:
    return Tokens(
        read=store.create_token("reader", "read", None)[1],
        write=store.create_token("writer", "write", None)[1],
        admin=store.create_token("admin", "admin", None)[1],
    )


@pytest.fixture
def settings() -> Settings:
    # The tests refuse hundreds of calls on purpose: no slowdown (tested on its own).
    return Settings(token_cache_seconds=0, auth_free_failures=0)


@pytest.fixture
def http() -> Iterator[Callable[..., httpx.Client]]:
    """Make HTTP clients that are all closed when the test ends (no leaked sockets)."""
    made: list[httpx.Client] = []

    def make(base_url: str, headers: dict[str, str], timeout: float = 60) -> httpx.Client:
        client = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


POSTGRES_IN_THE_FULL_SUITE_ONLY = frozenset(
    {
        "tests/test_cli.py",
        "tests/test_client.py",
        "tests/test_worker.py",
        "tests/test_launch.py",
        "tests/test_demo.py",
        "tests/e2e/test_secrets_in_logs.py",
        "tests/service/test_fits.py",
        "tests/service/test_per_metric_fits.py",
        "tests/service/test_async_fits.py",
        "tests/service/test_dashboard.py",
        "tests/service/test_dashboard_charts.py",
        "tests/service/test_docs_page.py",
        "tests/service/test_plugin_methods.py",
        "tests/service/test_sequential_methods.py",
        "tests/service/test_auth.py",
        "tests/service/test_strict_input.py",
        "tests/service/test_experiment_edit.py",
        "tests/service/test_runs_retry.py",
    }
)
"""Modules whose behaviour sits above the store (CLI, client, worker, fits, pages): their
Postgres variants are slow-marked, so the fast tier runs them on SQLite and CI's full suite on
both. The store, queue, online, ingest, migration, transfer and concurrency tests keep both
backends in the fast tier: that is where the backends differ."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = config.rootpath
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or callspec.params.get("database_url") != "postgres":
            continue
        if item.path.relative_to(root).as_posix() in POSTGRES_IN_THE_FULL_SUITE_ONLY:
            item.add_marker(pytest.mark.slow)
