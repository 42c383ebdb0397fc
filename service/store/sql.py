"""The SQL implementation of the Store: SQLite (embedded default) and Postgres (production).

Concurrency, in short:
- Postgres: READ COMMITTED; claims lock one pending row with ``FOR UPDATE SKIP LOCKED``; other
  state changes lock their row with ``FOR UPDATE``; metric points rely on the unique index.
- SQLite: WAL, a busy timeout, and ``BEGIN IMMEDIATE`` for every write transaction, so writers
  queue instead of failing with "database is locked" halfway through.
Every method is one transaction, committed before it returns.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Select,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import ConnectionPoolEntry

from mixopt.errors import Conflict, Gone, InvalidInput, LeaseLost, NotFound
from mixopt.settings import normalise_database_url
from service.store import schema
from service.store.base import (
    ExperimentRecord,
    FeedbackContext,
    FitRecord,
    NewExperiment,
    NewRun,
    OnlineState,
    Page,
    PointRecord,
    RunRecord,
    StaleVersion,
    Store,
    TokenRecord,
    WeightsRecord,
)
from service.store.cursor import decode_cursor, encode_cursor
from service.store.models import (
    ApiToken,
    ExperimentRow,
    FeedbackRow,
    FitRow,
    MetricPointRow,
    MixerStateRow,
    RunRow,
    WeightVersionRow,
)
from service.store.weights_cache import CHANNEL as WEIGHTS_CHANNEL
from service.store.weights_cache import WeightsCache, WeightsChangeListener

__all__ = ["SqlStore", "hash_token", "make_engine", "utcnow"]

_MAX_ID = 2**63 - 1
_CHUNK = 500  # keys per IN (...) list, well under every backend's parameter limit


def utcnow() -> datetime:
    return datetime.now(UTC)


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    """An engine configured for mixopt's concurrency rules (see the module docstring)."""
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
    return create_engine(url, pool_size=pool_size, max_overflow=2 * pool_size, pool_pre_ping=True)


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


def _chunks(items: Sequence[T], size: int = _CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


_STATUSES = ("pending", "running", "completed", "failed")
_WEIGHTS_CHANGED = "mixopt_weights_changed"
"""Key in ``Connection.info``: the runs whose weights a transaction changed."""


class SqlStore(Store):
    """``weights_cache``: answer current-weights reads from memory (Postgres only; see
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
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(sqlite_begin="DEFERRED")
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

    # --- experiments --------------------------------------------------------------------------

    def _counts(self, conn: Connection, ids: Sequence[int]) -> defaultdict[int, dict[str, int]]:
        counts: defaultdict[int, dict[str, int]] = defaultdict(
            lambda: dict.fromkeys((*_STATUSES, "excluded"), 0)
        )
        if not ids:
            return counts
        rows = conn.execute(
            select(RunRow.experiment_id, RunRow.status, RunRow.excluded, func.count())
            .where(RunRow.experiment_id.in_(ids))
            .group_by(RunRow.experiment_id, RunRow.status, RunRow.excluded)
        )
        for experiment_id, status, excluded, n in rows:
            counts[experiment_id][status] += n
            if excluded:
                counts[experiment_id]["excluded"] += n
        return counts

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

    def create_experiment(self, new: NewExperiment) -> ExperimentRecord:
        now = self._clock()
        try:
            with self._write() as conn:
                new_id = conn.execute(
                    insert(ExperimentRow)
                    .values(
                        name=new.name,
                        mode=new.mode,
                        method=new.method,
                        domains=new.domains,
                        objective=new.objective,
                        config=new.config,
                        status="active",
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(ExperimentRow.id)
                ).scalar_one()
                row = self._load_experiment(conn, new_id)
                return self._experiment(row, self._counts(conn, [new_id])[new_id])
        except IntegrityError as exc:
            raise Conflict(f"an active experiment is already named {new.name!r}") from exc

    def get_experiment(self, experiment_id: str, *, counts: bool = True) -> ExperimentRecord:
        eid = _parse_id(experiment_id, "experiment")
        with self._read() as conn:
            row = self._load_experiment(conn, eid)
            return self._experiment(row, self._counts(conn, [eid] if counts else [])[eid])

    def list_experiments(
        self, *, status: str | None, limit: int, cursor: str | None
    ) -> Page[ExperimentRecord]:
        query = select(ExperimentRow).order_by(ExperimentRow.id.desc()).limit(limit + 1)
        if status is not None:
            query = query.where(ExperimentRow.status == status)
        if cursor is not None:
            (after,) = decode_cursor(cursor, (int,))
            query = query.where(ExperimentRow.id < after)
        with self._read() as conn:
            rows = conn.execute(query).all()
            counts = self._counts(conn, [r.id for r in rows[:limit]])
        return _page(rows, limit, lambda r: self._experiment(r, counts[r.id]))

    def archive_experiment(self, experiment_id: str) -> ExperimentRecord:
        eid = _parse_id(experiment_id, "experiment")
        now = self._clock()
        with self._write() as conn:
            self._load_experiment(conn, eid)
            conn.execute(
                update(ExperimentRow)
                .where(ExperimentRow.id == eid, ExperimentRow.status == "active")
                .values(status="archived", archived_at=now, updated_at=now)
            )
            row = self._load_experiment(conn, eid)
            return self._experiment(row, self._counts(conn, [eid])[eid])

    # --- runs ---------------------------------------------------------------------------------

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
        )

    def _load_run(self, conn: Connection, run_id: int, *, lock: bool = False) -> Row[Any]:
        query = select(RunRow).where(RunRow.id == run_id)
        if lock:
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is None:
            raise NotFound(f"run {run_id} not found")
        return row

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

    def add_runs(
        self, experiment_id: str, runs: Sequence[NewRun], request_id: str | None = None
    ) -> list[RunRecord]:
        eid = _parse_id(experiment_id, "experiment")
        now = self._clock()
        try:
            with self._write() as conn:
                self._active_experiment(conn, eid)
                if request_id is not None:
                    earlier = self._runs_by_request(conn, eid, request_id)
                    if earlier is not None:
                        return earlier
                values = [
                    {
                        **self._run_values(run, eid, now),
                        "request_id": request_id,
                        "request_index": i if request_id is not None else None,
                    }
                    for i, run in enumerate(runs)
                ]
                if not values:
                    return []
                ids = (
                    conn.execute(
                        insert(RunRow).returning(RunRow.id, sort_by_parameter_order=True), values
                    )
                    .scalars()
                    .all()
                )
                rows = conn.execute(
                    select(RunRow).where(RunRow.id.in_(ids)).order_by(RunRow.id)
                ).all()
                return [self._run(r) for r in rows]
        except IntegrityError:
            # A concurrent retry with the same request_id won the race: answer with its runs.
            if request_id is None:
                raise
            with self._read() as conn:
                earlier = self._runs_by_request(conn, eid, request_id)
            if earlier is None:
                raise
            return earlier

    def runs_for_request(self, experiment_id: str, request_id: str) -> list[RunRecord] | None:
        eid = _parse_id(experiment_id, "experiment")
        with self._read() as conn:
            self._load_experiment(conn, eid)
            return self._runs_by_request(conn, eid, request_id)

    def _same_import(self, stored: Row[Any], run: NewRun) -> RunRecord:
        if stored.weights != dict(run.weights) or stored.metrics != dict(run.metrics):
            raise Conflict(
                f"external_id {run.external_id!r} is already stored with other weights or metrics"
            )
        return self._run(stored)

    def import_run(self, experiment_id: str, run: NewRun) -> tuple[RunRecord, bool]:
        eid = _parse_id(experiment_id, "experiment")
        now = self._clock()

        def by_external_id(conn: Connection) -> Row[Any] | None:
            return conn.execute(
                select(RunRow).where(
                    RunRow.experiment_id == eid, RunRow.external_id == run.external_id
                )
            ).first()

        try:
            with self._write() as conn:
                self._active_experiment(conn, eid)
                if run.external_id is not None:
                    stored = by_external_id(conn)
                    if stored is not None:
                        return self._same_import(stored, run), False
                new_id = conn.execute(
                    insert(RunRow).values(**self._run_values(run, eid, now)).returning(RunRow.id)
                ).scalar_one()
                return self._run(self._load_run(conn, new_id)), True
        except IntegrityError:
            if run.external_id is None:
                raise
            with self._read() as conn:  # a concurrent import of the same external_id won
                stored = by_external_id(conn)
            if stored is None:
                raise
            return self._same_import(stored, run), False

    def get_run(self, run_id: str) -> RunRecord:
        rid = _parse_id(run_id, "run")
        with self._read() as conn:
            return self._run(self._load_run(conn, rid))

    def list_runs(
        self,
        experiment_id: str,
        *,
        status: str | None = None,
        excluded: bool | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[RunRecord]:
        eid = _parse_id(experiment_id, "experiment")
        query = (
            select(RunRow).where(RunRow.experiment_id == eid).order_by(RunRow.id).limit(limit + 1)
        )
        if status is not None:
            query = query.where(RunRow.status == status)
        if excluded is not None:
            query = query.where(RunRow.excluded == excluded)
        if cursor is not None:
            (after,) = decode_cursor(cursor, (int,))
            query = query.where(RunRow.id > after)
        with self._read() as conn:
            self._load_experiment(conn, eid)
            rows = conn.execute(query).all()
        return _page(rows, limit, self._run)

    # --- the queue ----------------------------------------------------------------------------

    def _expire(self, conn: Connection, now: datetime, experiment_id: int | None = None) -> int:
        """Return expired leases: pending with attempt + 1, or failed after max_attempts.

        An expired lease counts as a failed attempt (the worker crashed or hung), as Optuna's
        heartbeat + retry callback treats a stale trial.
        """
        query = (
            select(RunRow.id, RunRow.attempt, ExperimentRow.config)
            .join(ExperimentRow, ExperimentRow.id == RunRow.experiment_id)
            .where(RunRow.status == "running", RunRow.lease_expires_at < now)
        )
        if experiment_id is not None:
            query = query.where(RunRow.experiment_id == experiment_id)
        if self._dialect == "postgresql":
            query = query.with_for_update(skip_locked=True, of=RunRow)
        expired = conn.execute(query).all()
        for run_id, attempt, config in expired:
            max_attempts = int(config.get("max_attempts", 3))
            values: dict[str, Any] = {
                "worker": None,
                "lease_expires_at": None,
                "updated_at": now,
                "reason": "lease expired",
            }
            if attempt >= max_attempts:
                values["status"] = "failed"
            else:
                values.update(status="pending", attempt=attempt + 1)
            conn.execute(
                update(RunRow)
                .where(RunRow.id == run_id, RunRow.status == "running")
                .values(**values)
            )
        return len(expired)

    def expire_leases(self) -> int:
        with self._write() as conn:
            return self._expire(conn, self._clock())

    def claim(self, experiment_id: str, worker: str, lease_seconds: int) -> RunRecord | None:
        eid = _parse_id(experiment_id, "experiment")
        now = self._clock()
        with self._write() as conn:
            if self._active_experiment(conn, eid).mode != "offline":
                raise Conflict(f"experiment {eid} is online: its runs are not claimed")
            self._expire(conn, now, eid)
            query = (
                select(RunRow.id)
                .where(
                    RunRow.experiment_id == eid,
                    RunRow.status == "pending",
                    RunRow.excluded.is_(False),
                )
                .order_by(RunRow.id)
                .limit(1)
            )
            if self._dialect == "postgresql":
                query = query.with_for_update(skip_locked=True)
            run_id = conn.execute(query).scalar()
            if run_id is None:
                return None
            conn.execute(
                update(RunRow)
                .where(RunRow.id == run_id)
                .values(
                    status="running",
                    worker=worker,
                    last_worker=worker,
                    lease_seconds=lease_seconds,
                    lease_expires_at=now + timedelta(seconds=lease_seconds),
                    updated_at=now,
                )
            )
            return self._run(self._load_run(conn, run_id))

    def heartbeat(self, run_id: str, worker: str, lease_seconds: int | None = None) -> RunRecord:
        rid = _parse_id(run_id, "run")
        now = self._clock()
        with self._write() as conn:
            row = self._load_run(conn, rid, lock=True)
            if row.status != "running" or row.worker != worker:
                raise LeaseLost(f"worker {worker!r} does not hold the lease of run {rid}")
            seconds = lease_seconds or row.lease_seconds or 600
            conn.execute(
                update(RunRow)
                .where(RunRow.id == rid)
                .values(
                    lease_seconds=seconds,
                    lease_expires_at=now + timedelta(seconds=seconds),
                    updated_at=now,
                )
            )
            return self._run(self._load_run(conn, rid))

    @staticmethod
    def _held_by(row: Row[Any], worker: str) -> bool:
        """``worker`` holds the lease, or held the last one and nobody re-claimed the run."""
        if row.status == "running":
            return bool(row.worker == worker)
        return row.status == "pending" and row.worker is None and row.last_worker == worker

    def complete(self, run_id: str, metrics: Mapping[str, float], worker: str | None) -> RunRecord:
        rid = _parse_id(run_id, "run")
        now = self._clock()
        with self._write() as conn:
            row = self._load_run(conn, rid, lock=True)
            if row.status == "completed":
                if row.metrics != dict(metrics):
                    raise Conflict(f"run {rid} is already completed with other metrics")
                return self._run(row)
            if row.status == "failed":
                raise Conflict(f"run {rid} has failed; it cannot be completed")
            if worker is not None and not self._held_by(row, worker):
                raise LeaseLost(f"worker {worker!r} does not hold the lease of run {rid}")
            conn.execute(
                update(RunRow)
                .where(RunRow.id == rid)
                .values(
                    status="completed",
                    metrics=dict(metrics),
                    worker=None,
                    lease_expires_at=None,
                    updated_at=now,
                )
            )
            # An online run's mixer state is frozen with it (no-op for offline runs).
            conn.execute(
                update(MixerStateRow)
                .where(MixerStateRow.run_id == rid)
                .values(frozen=True, updated_at=now)
            )
            return self._run(self._load_run(conn, rid))

    def fail(self, run_id: str, reason: str, worker: str | None) -> RunRecord:
        rid = _parse_id(run_id, "run")
        now = self._clock()
        with self._write() as conn:
            row = self._load_run(conn, rid, lock=True)
            if row.status == "completed":
                raise Conflict(f"run {rid} is completed; it cannot fail")
            if row.status == "failed":
                return self._run(row)
            if worker is not None:
                if not self._held_by(row, worker):
                    raise LeaseLost(f"worker {worker!r} does not hold the lease of run {rid}")
                if row.status == "pending":
                    # The lease already expired (or this is a retry): that attempt was counted.
                    return self._run(row)
            max_attempts = int(
                self._load_experiment(conn, row.experiment_id).config.get("max_attempts", 3)
            )
            values: dict[str, Any] = {
                "worker": None,
                "lease_expires_at": None,
                "reason": reason or None,
                "updated_at": now,
            }
            if row.attempt >= max_attempts:
                values["status"] = "failed"
            else:
                values.update(status="pending", attempt=row.attempt + 1)
            conn.execute(update(RunRow).where(RunRow.id == rid).values(**values))
            return self._run(self._load_run(conn, rid))

    def release(self, run_id: str, worker: str) -> RunRecord:
        rid = _parse_id(run_id, "run")
        now = self._clock()
        with self._write() as conn:
            row = self._load_run(conn, rid, lock=True)
            if not self._held_by(row, worker):
                raise LeaseLost(f"worker {worker!r} does not hold the lease of run {rid}")
            if row.status == "running":
                conn.execute(
                    update(RunRow)
                    .where(RunRow.id == rid)
                    .values(status="pending", worker=None, lease_expires_at=None, updated_at=now)
                )
            return self._run(self._load_run(conn, rid))

    def exclude(self, run_id: str, excluded: bool, reason: str | None) -> RunRecord:
        rid = _parse_id(run_id, "run")
        now = self._clock()
        with self._write() as conn:
            self._load_run(conn, rid, lock=True)
            conn.execute(
                update(RunRow)
                .where(RunRow.id == rid)
                .values(excluded=excluded, reason=reason, updated_at=now)
            )
            return self._run(self._load_run(conn, rid))

    # --- metric points ------------------------------------------------------------------------

    def append_metrics(
        self, run_id: str, points: Sequence[tuple[str, int, float]]
    ) -> tuple[int, int]:
        rid = _parse_id(run_id, "run")
        unique: dict[tuple[str, int], float] = {}
        for index, (name, step, value) in enumerate(points):
            if unique.setdefault((name, step), value) != value:
                raise InvalidInput.at(
                    ("body", "points", index),
                    f"point ({name!r}, step {step}) appears twice in the batch with other values",
                )
        with self._write() as conn:
            self._load_run(conn, rid)
            if not unique:
                return 0, 0
            inserted = self._insert_points(conn, rid, unique)
            known = [key for key in unique if key not in inserted]
            for chunk in _chunks(known):
                stored = conn.execute(
                    select(MetricPointRow.name, MetricPointRow.step, MetricPointRow.value).where(
                        MetricPointRow.run_id == rid,
                        tuple_(MetricPointRow.name, MetricPointRow.step).in_(list(chunk)),
                    )
                )
                for name, step, value in stored:
                    if value != unique[(name, step)]:
                        # Raising rolls the whole batch back: all-or-nothing.
                        raise Conflict(
                            f"point ({name!r}, step {step}) is stored with value {value!r}, "
                            f"not {unique[(name, step)]!r}"
                        )
            return len(unique), len(inserted)

    def _insert_points(
        self, conn: Connection, rid: int, points: dict[tuple[str, int], float]
    ) -> set[tuple[str, int]]:
        """Insert what is new; return the keys inserted (the rest were already stored)."""
        if self._dialect == "postgresql":
            # One statement over three arrays: far cheaper than a multi-row VALUES list.
            names, steps = zip(*points, strict=True)
            rows = conn.execute(
                text(
                    "INSERT INTO metric_points (run_id, name, step, value) "
                    "SELECT :run_id, n, s, v FROM unnest("
                    "CAST(:names AS varchar[]), CAST(:steps AS bigint[]), "
                    "CAST(:values AS float8[])) AS t(n, s, v) "
                    "ON CONFLICT (run_id, name, step) DO NOTHING RETURNING name, step"
                ),
                {
                    "run_id": rid,
                    "names": list(names),
                    "steps": list(steps),
                    "values": list(points.values()),
                },
            )
            return {(n, s) for n, s in rows}
        statement = (
            self._insert(MetricPointRow)
            .on_conflict_do_nothing(index_elements=["run_id", "name", "step"])
            .returning(MetricPointRow.name, MetricPointRow.step)
        )
        values = [{"run_id": rid, "name": n, "step": s, "value": v} for (n, s), v in points.items()]
        return {(n, s) for n, s in conn.execute(statement, values).all()}

    def list_metrics(
        self, run_id: str, *, name: str | None, limit: int, cursor: str | None
    ) -> Page[PointRecord]:
        rid = _parse_id(run_id, "run")
        columns = (MetricPointRow.step, MetricPointRow.name, MetricPointRow.value)
        query = (
            select(*columns)
            .where(MetricPointRow.run_id == rid)
            .order_by(MetricPointRow.step, MetricPointRow.name)
            .limit(limit + 1)
        )
        if name is not None:
            query = query.where(MetricPointRow.name == name)
        if cursor is not None:
            step, last_name = decode_cursor(cursor, (int, str))
            query = query.where(
                tuple_(MetricPointRow.step, MetricPointRow.name) > tuple_(step, last_name)
            )
        with self._read() as conn:
            self._load_run(conn, rid)
            rows = conn.execute(query).all()
        return _page(
            rows,
            limit,
            lambda r: PointRecord(r.name, r.step, r.value),
            key=lambda r: [r.step, r.name],
        )

    # --- tokens -------------------------------------------------------------------------------

    @staticmethod
    def _token(row: Row[Any]) -> TokenRecord:
        return TokenRecord(
            id=str(row.id),
            name=row.name,
            scope=row.scope,
            created_at=row.created_at,
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
        )

    def create_token(
        self, name: str, scope: str, expires_at: datetime | None
    ) -> tuple[TokenRecord, str]:
        secret = "mxo_" + secrets.token_urlsafe(32)  # 256 random bits
        with self._write() as conn:
            row = conn.execute(
                insert(ApiToken)
                .values(
                    name=name,
                    scope=scope,
                    token_hash=hash_token(secret),
                    created_at=self._clock(),
                    expires_at=expires_at,
                )
                .returning(*ApiToken.__table__.columns)
            ).one()
        return self._token(row), secret

    def find_token(self, secret: str) -> TokenRecord | None:
        digest = hash_token(secret)
        with self._read() as conn:
            row = conn.execute(select(ApiToken).where(ApiToken.token_hash == digest)).first()
        # The index finds the row; the comparison that decides is constant-time.
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            return None
        return self._token(row)

    def list_tokens(self, *, limit: int, cursor: str | None) -> Page[TokenRecord]:
        query = select(ApiToken).order_by(ApiToken.id).limit(limit + 1)
        if cursor is not None:
            (after,) = decode_cursor(cursor, (int,))
            query = query.where(ApiToken.id > after)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return _page(rows, limit, self._token)

    def revoke_token(self, token_id: str) -> TokenRecord:
        tid = _parse_id(token_id, "token")
        with self._write() as conn:
            conn.execute(
                update(ApiToken)
                .where(ApiToken.id == tid, ApiToken.revoked_at.is_(None))
                .values(revoked_at=self._clock())
            )
            row = conn.execute(select(ApiToken).where(ApiToken.id == tid)).first()
        if row is None:
            raise NotFound(f"token {tid} not found")
        return self._token(row)

    # --- online runs --------------------------------------------------------------------------

    @staticmethod
    def _weights(row: Row[Any]) -> WeightsRecord:
        return WeightsRecord(
            run_id=str(row.run_id),
            version=row.version,
            step=row.step,
            weights=row.weights,
            phase=row.phase,
            train_steps=row.train_steps,
            created_at=row.created_at,
            superseded=row.superseded,
        )

    def _add_version(
        self,
        conn: Connection,
        rid: int,
        version: int,
        step: int,
        weights: Mapping[str, float],
        phase: str,
        train_steps: int | None,
        state: Mapping[str, Any],
        now: datetime,
    ) -> WeightsRecord:
        """Write a new weights version and make them the run's current weights."""
        row = conn.execute(
            insert(WeightVersionRow)
            .values(
                run_id=rid,
                version=version,
                step=step,
                weights=dict(weights),
                phase=phase,
                train_steps=train_steps,
                state=dict(state),
                superseded=False,
                created_at=now,
            )
            .returning(*WeightVersionRow.__table__.columns)
        ).one()
        conn.execute(
            update(RunRow).where(RunRow.id == rid).values(weights=dict(weights), updated_at=now)
        )
        conn.info.setdefault(_WEIGHTS_CHANGED, set()).add(rid)
        if self._dialect == "postgresql":
            # Delivered at commit to every replica's weights cache (and only if it commits).
            conn.execute(select(func.pg_notify(WEIGHTS_CHANNEL, str(rid))))
        return self._weights(row)

    def start_online_run(
        self,
        experiment_id: str,
        *,
        name: str,
        total_steps: int | None,
        tags: Mapping[str, str],
        request_id: str | None,
        state: Mapping[str, Any],
        weights: Mapping[str, float],
        phase: str,
        train_steps: int | None,
    ) -> tuple[RunRecord, bool]:
        eid = _parse_id(experiment_id, "experiment")
        now = self._clock()
        try:
            with self._write() as conn:
                self._active_experiment(conn, eid)
                if request_id is not None:
                    earlier = self._runs_by_request(conn, eid, request_id)
                    if earlier is not None:
                        return earlier[0], False
                values = {
                    **self._run_values(NewRun(weights, tags=tags, status="running"), eid, now),
                    "name": name,
                    "total_steps": total_steps,
                    "request_id": request_id,
                    "request_index": 0 if request_id is not None else None,
                }
                run_id = conn.execute(
                    insert(RunRow).values(**values).returning(RunRow.id)
                ).scalar_one()
                conn.execute(
                    insert(MixerStateRow).values(
                        run_id=run_id, version=1, state=dict(state), frozen=False, updated_at=now
                    )
                )
                self._add_version(conn, run_id, 1, 0, weights, phase, train_steps, state, now)
                return self._run(self._load_run(conn, run_id)), True
        except IntegrityError:
            if request_id is None:
                raise
            with self._read() as conn:  # a concurrent retry with this request_id won
                earlier = self._runs_by_request(conn, eid, request_id)
            if earlier is None:
                raise
            return earlier[0], False

    def _online_state(self, conn: Connection, rid: int) -> Row[Any]:
        row: Row[Any] | None = conn.execute(
            select(
                MixerStateRow.version,
                MixerStateRow.state,
                MixerStateRow.frozen,
                RunRow.experiment_id,
            )
            .join(RunRow, RunRow.id == MixerStateRow.run_id)
            .where(MixerStateRow.run_id == rid)
        ).first()
        if row is None:
            self._load_run(conn, rid)  # NotFound for unknown runs
            raise NotFound(f"run {rid} is not an online training run")
        return row

    def online_state(self, run_id: str) -> OnlineState:
        rid = _parse_id(run_id, "run")
        with self._read() as conn:
            row = self._online_state(conn, rid)
        return OnlineState(
            run_id=str(rid),
            experiment_id=str(row.experiment_id),
            version=row.version,
            state=row.state,
            frozen=row.frozen,
        )

    def cached_weights(self, run_id: str) -> WeightsRecord | None:
        if self._weights_cache is None or not run_id.isdigit():
            return None
        return self._weights_cache.get(int(run_id))

    def get_weights(self, run_id: str, at_step: int | None = None) -> WeightsRecord:
        rid = _parse_id(run_id, "run")
        cache = self._weights_cache if at_step is None else None
        ticket = cache.ticket(rid) if cache is not None else None
        query = (
            select(WeightVersionRow)
            .where(WeightVersionRow.run_id == rid, WeightVersionRow.superseded.is_(False))
            .order_by(WeightVersionRow.version.desc())
            .limit(1)
        )
        if at_step is not None:
            query = query.where(WeightVersionRow.step <= at_step)
        with self._read() as conn:
            row = conn.execute(query).first()
            if row is None:
                self._online_state(conn, rid)  # NotFound unless it is an online run
                raise NotFound(f"run {rid} has no weights at step {at_step}")
        record = self._weights(row)
        if cache is not None and ticket is not None:
            cache.put(ticket, record)
        return record

    def weights_history(
        self, run_id: str, *, limit: int, cursor: str | None
    ) -> Page[WeightsRecord]:
        rid = _parse_id(run_id, "run")
        query = (
            select(WeightVersionRow)
            .where(WeightVersionRow.run_id == rid)
            .order_by(WeightVersionRow.version)
            .limit(limit + 1)
        )
        if cursor is not None:
            (after,) = decode_cursor(cursor, (int,))
            query = query.where(WeightVersionRow.version > after)
        with self._read() as conn:
            self._online_state(conn, rid)
            rows = conn.execute(query).all()
        return _page(rows, limit, self._weights, key=lambda r: [r.version])

    def feedback_context(self, run_id: str, step: int) -> FeedbackContext:
        rid = _parse_id(run_id, "run")
        recorded = (
            select(FeedbackRow.body)
            .where(
                FeedbackRow.run_id == rid,
                FeedbackRow.step == step,
                FeedbackRow.superseded.is_(False),
            )
            .scalar_subquery()
        )
        query: Select[Any] = (
            select(
                *ExperimentRow.__table__.columns,
                MixerStateRow.version.label("state_version"),
                MixerStateRow.state.label("state_body"),
                MixerStateRow.frozen.label("state_frozen"),
                recorded.label("recorded"),
            )
            .select_from(MixerStateRow)
            .join(RunRow, RunRow.id == MixerStateRow.run_id)
            .join(ExperimentRow, ExperimentRow.id == RunRow.experiment_id)
            .where(MixerStateRow.run_id == rid)
        )
        with self._read() as conn:
            row = conn.execute(query).first()
            if row is None:
                self._online_state(conn, rid)  # the right NotFound
                raise NotFound(f"run {rid} is not an online training run")
        state = OnlineState(
            run_id=str(rid),
            experiment_id=str(row.id),
            version=row.state_version,
            state=row.state_body,
            frozen=row.state_frozen,
        )
        return FeedbackContext(state, self._experiment(row, {}), row.recorded)

    def last_feedback(self, run_id: str) -> dict[str, Any] | None:
        rid = _parse_id(run_id, "run")
        with self._read() as conn:
            body: dict[str, Any] | None = conn.execute(
                select(FeedbackRow.body)
                .where(FeedbackRow.run_id == rid, FeedbackRow.superseded.is_(False))
                .order_by(FeedbackRow.step.desc())
                .limit(1)
            ).scalar()
        return body

    def apply_feedback(
        self,
        run_id: str,
        *,
        expected_version: int,
        step: int,
        body: Mapping[str, Any],
        state: Mapping[str, Any],
        weights: Mapping[str, float],
        phase: str,
        train_steps: int | None,
    ) -> WeightsRecord:
        rid = _parse_id(run_id, "run")
        now = self._clock()
        new_version = expected_version + 1
        try:
            with self._write() as conn:
                moved = conn.execute(
                    update(MixerStateRow)
                    .where(
                        MixerStateRow.run_id == rid,
                        MixerStateRow.version == expected_version,
                        MixerStateRow.frozen.is_(False),
                    )
                    .values(version=new_version, state=dict(state), updated_at=now)
                ).rowcount
                if moved != 1:
                    current = self._online_state(conn, rid)
                    if current.frozen:
                        raise Conflict(f"run {rid} is completed; its mixer state is frozen")
                    raise StaleVersion(f"run {rid} is at version {current.version}")
                conn.execute(
                    insert(FeedbackRow).values(
                        run_id=rid,
                        step=step,
                        version=body.get("version"),
                        body=dict(body),
                        superseded=False,
                        created_at=now,
                    )
                )
                return self._add_version(
                    conn, rid, new_version, step, weights, phase, train_steps, state, now
                )
        except IntegrityError as exc:
            # Another replica recorded feedback for this step first (or took this version).
            raise StaleVersion(f"run {rid}: concurrent feedback") from exc

    def resume(self, run_id: str, step: int) -> WeightsRecord:
        rid = _parse_id(run_id, "run")
        now = self._clock()
        with self._write() as conn:
            current = conn.execute(
                select(MixerStateRow).where(MixerStateRow.run_id == rid).with_for_update()
            ).first()
            if current is None:
                self._online_state(conn, rid)
                raise NotFound(f"run {rid} is not an online training run")
            if current.frozen:
                raise Conflict(f"run {rid} is completed; it cannot resume")
            target = conn.execute(
                select(WeightVersionRow)
                .where(
                    WeightVersionRow.run_id == rid,
                    WeightVersionRow.superseded.is_(False),
                    WeightVersionRow.step <= step,
                )
                .order_by(WeightVersionRow.version.desc())
                .limit(1)
            ).one()
            conn.execute(
                update(FeedbackRow)
                .where(
                    FeedbackRow.run_id == rid,
                    FeedbackRow.step > step,
                    FeedbackRow.superseded.is_(False),
                )
                .values(superseded=True)
            )
            conn.execute(
                update(WeightVersionRow)
                .where(
                    WeightVersionRow.run_id == rid,
                    WeightVersionRow.version > target.version,
                    WeightVersionRow.superseded.is_(False),
                )
                .values(superseded=True)
            )
            new_version = current.version + 1
            conn.execute(
                update(MixerStateRow)
                .where(MixerStateRow.run_id == rid)
                .values(version=new_version, state=target.state, updated_at=now)
            )
            return self._add_version(
                conn,
                rid,
                new_version,
                step,
                target.weights,
                target.phase,
                target.train_steps,
                target.state,
                now,
            )

    # --- fits ---------------------------------------------------------------------------------

    @staticmethod
    def _fit(row: Row[Any]) -> FitRecord:
        return FitRecord(
            id=str(row.id),
            experiment_id=str(row.experiment_id),
            model=row.model,
            requested=row.requested,
            n_runs=row.n_runs,
            report=row.report,
            recommendation=row.recommendation,
            fitted_at=row.fitted_at,
        )

    _FIT_COLUMNS = (
        FitRow.id,
        FitRow.experiment_id,
        FitRow.model,
        FitRow.requested,
        FitRow.n_runs,
        FitRow.report,
        FitRow.recommendation,
        FitRow.fitted_at,
    )

    def add_fit(
        self,
        experiment_id: str,
        *,
        model: str,
        requested: str,
        n_runs: int,
        report: Mapping[str, Any],
        recommendation: Mapping[str, Any] | None,
        blob: bytes | None,
    ) -> FitRecord:
        eid = _parse_id(experiment_id, "experiment")
        with self._write() as conn:
            self._load_experiment(conn, eid)
            row = conn.execute(
                insert(FitRow)
                .values(
                    experiment_id=eid,
                    model=model,
                    requested=requested,
                    n_runs=n_runs,
                    report=dict(report),
                    recommendation=dict(recommendation) if recommendation is not None else None,
                    model_blob=blob,
                    fitted_at=self._clock(),
                )
                .returning(*self._FIT_COLUMNS)
            ).one()
        return self._fit(row)

    def get_fit(self, fit_id: str) -> FitRecord:
        fid = _parse_id(fit_id, "fit")
        with self._read() as conn:
            row = conn.execute(select(*self._FIT_COLUMNS).where(FitRow.id == fid)).first()
        if row is None:
            raise NotFound(f"fit {fid} not found")
        return self._fit(row)

    def list_fits(self, experiment_id: str, *, limit: int, cursor: str | None) -> Page[FitRecord]:
        eid = _parse_id(experiment_id, "experiment")
        query = (
            select(*self._FIT_COLUMNS)
            .where(FitRow.experiment_id == eid)
            .order_by(FitRow.id.desc())
            .limit(limit + 1)
        )
        if cursor is not None:
            (before,) = decode_cursor(cursor, (int,))
            query = query.where(FitRow.id < before)
        with self._read() as conn:
            self._load_experiment(conn, eid)
            rows = conn.execute(query).all()
        return _page(rows, limit, self._fit)

    def latest_fit(self, experiment_id: str) -> tuple[FitRecord, bytes | None] | None:
        eid = _parse_id(experiment_id, "experiment")
        with self._read() as conn:
            self._load_experiment(conn, eid)
            row = conn.execute(
                select(*self._FIT_COLUMNS, FitRow.model_blob)
                .where(FitRow.experiment_id == eid)
                .order_by(FitRow.id.desc())
                .limit(1)
            ).first()
        if row is None:
            return None
        return self._fit(row), row.model_blob
