"""A database that is down or locked is a 503 with Retry-After, never a 500 or a 401; a real bug
stays a 500. (The outage of a real Postgres server: tests/e2e/test_database_outage.py.)"""

from __future__ import annotations

import asyncio
import sqlite3
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI
from sqlalchemy import event, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from mixopt.settings import Settings
from service.main import _sweep_leases, create_app
from service.store import SqlStore, schema
from service.store.sql import _base as base
from service.store.sql import make_engine
from service.store.unavailable import database_unavailable
from tests.servers import free_port
from tests.service.conftest import experiment_body

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

API = "/api/v1"


def assert_unavailable(response: Any) -> dict[str, Any]:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert 1 <= int(response.headers["retry-after"]) <= 10
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert body["status"] == 503
    # Nothing about where the database is or what was running: that is for the log.
    for leak in ("127.0.0.1", "postgresql", "SELECT", "Traceback", "sqlalche.me"):
        assert leak not in response.text
    return body


def no_lifespan(app: FastAPI, **options: Any) -> TestClient:
    """A client that skips the app's startup, which needs the database these tests take away
    (it fails fits a crash left running); the requests themselves need no startup."""
    return TestClient(app, **options)


@pytest.fixture
def unreachable() -> Iterator[SqlStore]:
    """A store whose Postgres server is not there: every connection is refused."""
    store = SqlStore(make_engine(f"postgresql://postgres:s3cret@127.0.0.1:{free_port()}/mixopt"))
    yield store
    store.close()


def test_every_request_needing_an_unreachable_database_is_503_with_retry_after(
    unreachable: SqlStore,
) -> None:
    client = no_lifespan(create_app(Settings(no_auth=True), unreachable))
    assert_unavailable(client.get(f"{API}/experiments/1"))
    assert_unavailable(client.get(f"{API}/experiments"))
    assert_unavailable(client.post(f"{API}/experiments/1/claim", json={"worker": "w"}))
    points = {"points": [{"name": "loss", "step": 1, "value": 1.0}]}
    assert_unavailable(client.post(f"{API}/runs/1/metrics", json=points))
    assert_unavailable(client.get(f"{API}/runs/1/weights"))
    ready = assert_unavailable(client.get("/readyz"))
    assert ready["detail"].startswith("not ready")
    assert "s3cret" not in client.get("/readyz").text
    assert client.get("/healthz").status_code == 200


def test_a_token_lookup_the_database_cannot_answer_is_503_not_401(
    unreachable: SqlStore,
) -> None:
    client = no_lifespan(create_app(Settings(token_cache_seconds=5), unreachable))
    headers = {"Authorization": "Bearer mxo_not-checked-yet"}
    assert_unavailable(client.get(f"{API}/experiments", headers=headers))
    # The failure is not cached as "unknown token": the next call asks the database again.
    assert_unavailable(client.get(f"{API}/experiments", headers=headers))
    # Without a header no lookup is needed: still 401.
    assert client.get(f"{API}/experiments").status_code == 401


def test_a_sqlite_database_locked_past_the_busy_timeout_is_503(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    engine = make_engine(f"sqlite:///{path}")
    schema.upgrade(engine)

    @event.listens_for(engine, "connect")
    def _short_wait(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA busy_timeout=50")  # runs after make_engine's 60 s

    engine.dispose()  # connections made from now on wait 50 ms
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        with TestClient(create_app(Settings(no_auth=True), SqlStore(engine))) as client:
            holder.execute("BEGIN IMMEDIATE")  # another process writing and never finishing
            body = experiment_body()
            assert_unavailable(client.post(f"{API}/experiments", json=body))
            holder.execute("ROLLBACK")
            assert client.post(f"{API}/experiments", json=body).status_code == 201
    finally:
        holder.close()
        engine.dispose()


def test_a_database_error_that_is_a_bug_stays_a_500(tmp_path: Path) -> None:
    # No migrations: "no such table" is an OperationalError in SQLite, and no retry fixes it.
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    app = create_app(Settings(no_auth=True), SqlStore(engine))
    client = no_lifespan(app, raise_server_exceptions=False)
    response = client.get(f"{API}/experiments/1")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert "retry-after" not in response.headers
    assert "no such table" not in response.text
    # /readyz says why it is not ready: the schema, not an outage.
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert "not at head" in ready.json()["detail"]
    engine.dispose()


def _wrapped(orig: BaseException) -> OperationalError:
    return OperationalError("SELECT 1", {}, orig)


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        (_wrapped(psycopg.OperationalError("connection refused")), True),
        (_wrapped(psycopg.errors.AdminShutdown()), True),
        (_wrapped(psycopg.errors.CannotConnectNow()), True),
        (_wrapped(psycopg.errors.TooManyConnections()), True),
        (_wrapped(psycopg.errors.DeadlockDetected()), True),
        (_wrapped(psycopg.errors.SerializationFailure()), True),
        (_wrapped(psycopg.errors.LockNotAvailable()), True),
        (_wrapped(psycopg.errors.QueryCanceled()), True),
        (_wrapped(psycopg.errors.ProgramLimitExceeded()), False),
        (_wrapped(psycopg.errors.UndefinedTable()), False),
        (IntegrityError("INSERT", {}, psycopg.errors.UniqueViolation()), False),
        (PoolTimeout("QueuePool limit reached"), True),
        (OperationalError("SELECT 1", {}, Exception("gone"), connection_invalidated=True), True),
    ],
    ids=lambda value: type(getattr(value, "orig", value)).__name__,
)
def test_which_postgres_errors_are_transient(error: BaseException, unavailable: bool) -> None:
    assert database_unavailable(error) is unavailable


def test_which_sqlite_errors_are_transient(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    other = sqlite3.connect(path, timeout=0.01)
    engine = make_engine(f"sqlite:///{tmp_path / 'y.db'}")
    try:
        with pytest.raises(sqlite3.OperationalError) as locked:
            other.execute("SELECT * FROM sqlite_master")
        assert database_unavailable(locked.value)
        with pytest.raises(OperationalError) as missing, engine.connect() as conn:
            conn.execute(text("SELECT * FROM no_such_table"))
        assert not database_unavailable(missing.value)
        with pytest.raises(OperationalError) as syntax, engine.connect() as conn:
            conn.execute(text("SELEKT 1"))
        assert not database_unavailable(syntax.value)
    finally:
        other.close()
        holder.close()
        engine.dispose()


class FlakyStore:
    """A store whose lease sweep fails with the database away, then works again."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def expire_leases(self) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise _wrapped(psycopg.OperationalError("server closed the connection"))
        return 0


def test_the_lease_sweeper_keeps_running_through_an_outage() -> None:
    store = FlakyStore(failures=3)

    async def run() -> None:
        task = asyncio.create_task(_sweep_leases(store, 0.005))  # type: ignore[arg-type]
        while store.calls < 6 and not task.done():
            await asyncio.sleep(0.005)
        assert not task.done()
        task.cancel()

    asyncio.run(run())
    assert store.calls >= 6


def test_the_openapi_document_lists_503_on_api_calls(unreachable: SqlStore) -> None:
    document = create_app(Settings(no_auth=True), unreachable).openapi()
    answers = document["paths"][f"{API}/experiments/{{experiment_id}}"]["get"]["responses"]
    assert "503" in answers


def _terminate_backends(url: str) -> None:
    """Kill every other session on ``url``'s database, as a server restart would."""
    admin = make_engine(url)
    with admin.connect() as conn:
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    admin.dispose()


def test_a_pooled_connection_the_server_dropped_is_replaced_after_idling(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pinged at checkout only after PING_AFTER_IDLE_SECONDS idle (an append's round trip saved).
    engine = make_engine(pg_database, pool_size=2)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        _terminate_backends(pg_database)
        monkeypatch.setattr(base, "PING_AFTER_IDLE_SECONDS", 0.0)
        with engine.connect() as conn:  # the ping finds it dead: a new connection, no error
            assert conn.execute(text("SELECT 1")).scalar() == 1

        _terminate_backends(pg_database)
        monkeypatch.setattr(base, "PING_AFTER_IDLE_SECONDS", 3600.0)
        with pytest.raises(OperationalError), engine.connect() as conn:
            conn.execute(text("SELECT 1"))  # used a moment ago: not pinged, the request fails
        with engine.connect() as conn:  # ... and the disconnect replaced the pool's connections
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
