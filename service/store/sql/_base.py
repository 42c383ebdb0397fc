"""What every aggregate of the SQL store shares: the engine, transactions, ids, pages, and the
experiment and run rows that several aggregates read."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Row, Select, create_engine, event, make_url, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DisconnectionError, IntegrityError
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.pool import ConnectionPoolEntry

from mixopt.errors import Gone, NotFound
from mixopt.settings import normalise_database_url
from service.store import schema
from service.store.base import ExperimentRecord, NewRun, Page, RunRecord, Store
from service.store.cursor import decode_cursor, encode_cursor
from service.store.models import ExperimentRow, RunRow
from service.store.weights_cache import WeightsCache, WeightsChangeListener

__all__ = ["SqlStoreBase", "make_engine", "utcnow"]

_MAX_ID = 2**63 - 1
_CHUNK = 500  # keys per IN (...) list, well under every backend's parameter limit


def utcnow() -> datetime:
    return datetime.now(UTC)


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    """An engine configured for mixopt's concurrency rules (see ``service.store.sql``)."""
    url = normalise_database_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": 60, "check_same_thread": False},
            pool_size=pool_size,
            max_overflow=2 * pool_size,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
            # The driver's own transaction handling would BEGIN DEFERRED; we begin ourselves.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=FULL")  # durable when answered, even on power loss
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Connection) -> None:
            mode = connection.get_execution_options().get("sqlite_begin", "IMMEDIATE")
            connection.exec_driver_sql(f"BEGIN {mode}")

        return engine
    # max_overflow=0: a busy server waits for one of its pool_size connections (after
    # pool_timeout, 30 s, a 503) instead of opening and closing one per request beyond them:
    # under the ingest benchmark 32 requests in flight on a pool of 20 made the server spend its
    # CPU connecting (14,000 -> 18,700-20,300 points/s without that churn). connect_timeout: with
    # the server unreachable, a request answers 503 in seconds instead of hanging until the OS
    # gives up on TCP.
    connect_args = {} if "connect_timeout" in make_url(url).query else {"connect_timeout": 5}
    engine = create_engine(url, pool_size=pool_size, max_overflow=0, connect_args=connect_args)
    _ping_idle_connections(engine)
    return engine


PING_AFTER_IDLE_SECONDS = 1.0


def _ping_idle_connections(engine: Engine) -> None:
    """Ping a connection at checkout when it has been idle ``PING_AFTER_IDLE_SECONDS``.

    A connection the server dropped (a restart, a failover) is then replaced at checkout
    instead of failing the request, as with ``pool_pre_ping``, which pings at every checkout:
    one round trip in two of a metric append, the hottest call. A connection back in use within
    a second was working a moment ago; if the server went away meanwhile, the request fails
    (503), and the disconnect invalidates the whole pool, so the next checkouts connect anew.
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is not None and time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:
            # The pool discards this connection and checks out another (or connects anew).
            raise DisconnectionError(str(error)) from error


def _parse_id(value: str, what: str) -> int:
    if not value.isdigit() or int(value) > _MAX_ID or int(value) < 1:
        raise NotFound(f"{what} {value!r} not found")
    return int(value)


T = TypeVar("T")


def _page(
    rows: Sequence[Any],
    limit: int,
    convert: Callable[[Any], T],
    key: Callable[[Any], list[Any]] = lambda row: [row.id],
) -> Page[T]:
    """Keyset pagination: ``rows`` were fetched with ``limit + 1``; the extra row says more."""
    page = rows[:limit]
    next_cursor = encode_cursor(key(page[-1])) if len(rows) > limit else None
    return Page([convert(r) for r in page], next_cursor)


def _keyset(
    query: Select[Any],
    column: InstrumentedAttribute[int],
    cursor: str | None,
    limit: int,
    *,
    descending: bool = False,
) -> Select[Any]:
    """``query`` ordered by ``column`` and resumed after ``cursor``, one row more than ``limit``
    (for ``_page``)."""
    query = query.order_by(column.desc() if descending else column).limit(limit + 1)
    if cursor is not None:
        (last,) = decode_cursor(cursor, (int,))
        query = query.where(column < last if descending else column > last)
    return query


def _chunks(items: Sequence[T], size: int = _CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


_WEIGHTS_CHANGED = "mixopt_weights_changed"
"""Key in ``Connection.info``: the runs whose weights a transaction changed."""


class SqlStoreBase(Store):
    """The engine, transactions and the rows every aggregate reads.

    ``weights_cache``: answer current-weights reads from memory (Postgres only; see
    ``service.store.weights_cache`` for why it stays correct across replicas)."""

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], datetime] = utcnow,
        weights_cache: bool = False,
    ) -> None:
        self.engine = engine
        self._clock = clock
        self._dialect = engine.dialect.name
        self._weights_cache: WeightsCache | None = None
        self._listener: WeightsChangeListener | None = None
        if weights_cache and self._dialect == "postgresql":
            self._weights_cache = WeightsCache()
            conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._listener = WeightsChangeListener(conninfo, self._weights_cache).start()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
        self.engine.dispose()

    def wait_weights_cache(self, timeout: float = 10.0) -> bool:
        """Block until the weights cache answers (its listener is connected); False if it has
        none or it did not connect in time."""
        return self._listener is not None and self._listener.wait_connected(timeout)

    # --- transactions -------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(sqlite_begin="IMMEDIATE")
            try:
                with conn.begin():
                    yield conn
            finally:
                # After the commit (or the rollback), never before: a reader between an early
                # invalidation and the commit would cache the old version again.
                changed = conn.info.pop(_WEIGHTS_CHANGED, ())
                if self._weights_cache is not None:
                    for rid in changed:
                        self._weights_cache.invalidate(rid)

    @contextmanager
    def _read(self, *, snapshot: bool = False) -> Iterator[Connection]:
        """A read transaction. With ``snapshot``, every statement in it sees the same committed
        state (SQLite's read transactions always do; Postgres then reads REPEATABLE READ)."""
        with self.engine.connect() as conn:
            conn.execution_options(sqlite_begin="DEFERRED")
            if snapshot and self._dialect == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    def _insert(self, table: Any) -> Any:
        """A dialect-specific INSERT, which has ON CONFLICT."""
        return (postgresql if self._dialect == "postgresql" else sqlite).insert(table)

    def check_ready(self) -> None:
        with self._read() as conn:
            current = schema.current_revision(conn)
        head = schema.head_revision()
        if current != head:
            raise RuntimeError(f"database schema is at {current}, not at head {head}")

    # --- rows shared by several aggregates ----------------------------------------------------

    @staticmethod
    def _experiment(row: Row[Any], counts: dict[str, int]) -> ExperimentRecord:
        return ExperimentRecord(
            id=str(row.id),
            name=row.name,
            mode=row.mode,
            method=row.method,
            domains=row.domains,
            objective=row.objective,
            config=row.config,
            status=row.status,
            created_at=row.created_at,
            updated_at=row.updated_at,
            archived_at=row.archived_at,
            counts=counts,
            objective_changed_at=row.objective_changed_at,
        )

    def _load_experiment(
        self, conn: Connection, experiment_id: int, *, lock: bool = False
    ) -> Row[Any]:
        query = select(ExperimentRow).where(ExperimentRow.id == experiment_id)
        if lock and self._dialect == "postgresql":
            query = query.with_for_update(read=True)
        row = conn.execute(query).first()
        if row is None:
            raise NotFound(f"experiment {experiment_id} not found")
        return row

    def _active_experiment(self, conn: Connection, experiment_id: int) -> Row[Any]:
        row = self._load_experiment(conn, experiment_id, lock=True)
        if row.status != "active":
            raise Gone(f"experiment {experiment_id} is archived and accepts no new runs")
        return row

    @staticmethod
    def _run(row: Row[Any]) -> RunRecord:
        return RunRecord(
            id=str(row.id),
            experiment_id=str(row.experiment_id),
            status=row.status,
            weights=row.weights,
            params=row.params,
            tags=row.tags,
            metrics=row.metrics,
            excluded=row.excluded,
            reason=row.reason,
            worker=row.worker,
            lease_expires_at=row.lease_expires_at,
            attempt=row.attempt,
            external_id=row.external_id,
            created_at=row.created_at,
            updated_at=row.updated_at,
            name=row.name,
        )

    def _load_run(self, conn: Connection, run_id: int, *, lock: bool = False) -> Row[Any]:
        query = select(RunRow).where(RunRow.id == run_id)
        if lock:
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is None:
            raise NotFound(f"run {run_id} not found")
        return row

    def _insert_once(
        self,
        experiment_id: int,
        key: str | None,
        find: Callable[[Connection, str], T | None],
        insert: Callable[[Connection], T],
    ) -> T:
        """``insert`` into an active experiment at most once per ``key`` (a request_id or an
        external_id; with None, always insert).

        ``find`` answers what an earlier call with ``key`` stored, or None. When the insert
        breaks a unique constraint, a concurrent call with the same key committed first:
        ``find`` then answers what that winner stored, in a transaction of its own (and if it
        finds nothing, the constraint broken was another one: the error is raised).
        """
        try:
            with self._write() as conn:
                self._active_experiment(conn, experiment_id)
                if key is not None:
                    earlier = find(conn, key)
                    if earlier is not None:
                        return earlier
                return insert(conn)
        except IntegrityError:
            if key is None:
                raise
            with self._read() as conn:
                earlier = find(conn, key)
            if earlier is None:
                raise
            return earlier

    def _runs_by_request(
        self, conn: Connection, experiment_id: int, request_id: str
    ) -> list[RunRecord] | None:
        rows = conn.execute(
            select(RunRow)
            .where(RunRow.experiment_id == experiment_id, RunRow.request_id == request_id)
            .order_by(RunRow.request_index)
        ).all()
        return [self._run(r) for r in rows] or None

    def _run_values(self, run: NewRun, experiment_id: int, now: datetime) -> dict[str, Any]:
        return {
            "experiment_id": experiment_id,
            "status": run.status,
            "weights": dict(run.weights),
            "params": dict(run.params),
            "tags": dict(run.tags),
            "metrics": dict(run.metrics),
            "excluded": False,
            "attempt": 1,
            "external_id": run.external_id,
            "created_at": now,
            "updated_at": now,
        }
