"""What the benchmarks share: a fresh Postgres database with ``mixopt serve`` in front of it."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, make_url, text

from mixopt.settings import normalise_database_url
from service.store import SqlStore, schema
from service.store.sql import make_engine
from tests.servers import ServerProcess

SERVER = os.environ.get("MIXOPT_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass(frozen=True)
class BenchServer:
    url: str
    """The service's base URL."""
    token: str
    """An admin token."""
    dsn: str
    """The database, for psycopg."""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextmanager
def bench_server(*serve_args: str) -> Iterator[BenchServer]:
    """A migrated database of its own and one ``mixopt serve`` process (given ``serve_args``,
    e.g. ``--workers 2``); both gone afterwards."""
    server_url = normalise_database_url(SERVER)
    name = f"mixopt_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    process: ServerProcess | None = None
    try:
        schema.upgrade(engine)
        _, token = SqlStore(engine).create_token("bench", "admin", None)
        process = ServerProcess(url, Path(tempfile.mkdtemp()), *serve_args).start()
        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        yield BenchServer(process.url, token, dsn)
    finally:
        if process is not None:
            process.stop()
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
