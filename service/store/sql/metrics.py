"""Metric points: appended once per (name, step), read by step."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Select,
    String,
    func,
    literal,
    select,
    text,
    tuple_,
    union_all,
)
from sqlalchemy.exc import DBAPIError

from mixopt.errors import Conflict, InvalidInput, NotFound
from service.store.base import Page, PointRecord, SeriesPoint
from service.store.cursor import decode_cursor
from service.store.models import MetricPointRow
from service.store.sql._base import SqlStoreBase, _chunks, _page, _parse_id

__all__ = ["MetricStore"]

_CONFLICT = "mixopt-metric-conflict:"
"""Marks the error of a point stored with another value (see ``_append_postgres``)."""
_BUCKETED_NAMES = 200  # names per bucket query (SQLite allows 500 terms in a compound SELECT)


def _bucket_divisor(span: int, max_points: int) -> int:
    """What steps are divided by before they are multiplied by ``max_points``, so that no
    product leaves BIGINT: 1 (exact buckets) unless ``span * max_points`` nears 2**62 (steps go
    up to 2**62), and then just enough to stay under it."""
    return ((span + 1) * max_points >> 62) + 1


def _array_literal(elements: Iterable[str]) -> str:
    """A Postgres array literal of already-formatted elements.

    Sent as text and cast by the statement: psycopg's list adapter formats each element in
    Python, 0.6 ms of CPU for a batch of 100 points (measured), a fifth of the whole request;
    formatting the text here takes about a sixth of that. Steps are integers and values
    floats, whose ``repr`` is the shortest text that reads back as the same double; names go
    through ``_quoted``.
    """
    return "{" + ",".join(elements) + "}"


def _quoted(name: str) -> str:
    """``name`` as an array element: always quoted (a metric named NULL stays a name), with
    the two characters that need it escaped (API names cannot hold them; store callers might)."""
    if "\\" in name or '"' in name:
        name = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{name}"'


class MetricStore(SqlStoreBase):
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
        if unique and self._dialect == "postgresql":
            return len(unique), self._append_postgres(rid, unique)
        with self._write() as conn:
            if not unique:
                self._load_run(conn, rid)
                return 0, 0
            new = self._insert_points(conn, rid, unique)
            if new < len(unique):
                # Some points were stored already (a retry, or another writer): the same value
                # is a no-op, another one a conflict. The points just inserted compare equal.
                self._check_stored(conn, rid, unique)
            return len(unique), new

    def _append_postgres(self, rid: int, points: dict[tuple[str, int], float]) -> int:
        """The append as one statement in its own transaction (autocommit: no BEGIN and COMMIT
        round trips; it is durable when it returns): how many points were new.

        A point already stored with the same value is left alone; with another value, the
        ``ON CONFLICT`` branch fails the statement (a cast that cannot succeed, naming the
        point), so nothing of the batch is written. It sees the latest committed row, so a
        concurrent batch with another value for the same point is a conflict too.
        """
        # In key order: batches that share points then wait for one another's rows in one
        # order, never in a cycle (Postgres would abort one with "deadlock detected").
        keys = sorted(points)
        names, steps = zip(*keys, strict=True)
        statement = text(
            "WITH run AS (SELECT id FROM runs WHERE id = :run_id), "
            "new AS (INSERT INTO metric_points (run_id, name, step, value) "
            "SELECT run.id, n, s, v FROM run, unnest("
            "CAST(:names AS varchar[]), CAST(:steps AS bigint[]), "
            "CAST(:values AS float8[])) AS t(n, s, v) "
            "ON CONFLICT (run_id, name, step) DO UPDATE SET value = metric_points.value "
            "WHERE CASE WHEN metric_points.value = EXCLUDED.value THEN false "
            f"ELSE CAST('{_CONFLICT}' || EXCLUDED.step || ':' || EXCLUDED.name AS int) = 0 END "
            "RETURNING 1) "
            "SELECT EXISTS (SELECT FROM run), (SELECT count(*) FROM new)"
        )
        params = {
            "run_id": rid,
            "names": _array_literal(_quoted(name) for name in names),
            "steps": _array_literal(map(str, steps)),
            "values": _array_literal(repr(points[key]) for key in keys),
        }
        with self.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            try:
                found, new = conn.execute(statement, params).one()
            except DBAPIError as error:
                message = str(error.orig)
                if _CONFLICT not in message:
                    raise
                step_text, _, rest = message.partition(_CONFLICT)[2].partition(":")
                step = int(step_text)
                # The name ends at the closing quote of the message (names have no quotes).
                name = next(n for n, s in keys if s == step and rest.startswith(f'{n}"'))
                stored = conn.execute(
                    select(MetricPointRow.value).where(
                        MetricPointRow.run_id == rid,
                        MetricPointRow.name == name,
                        MetricPointRow.step == step,
                    )
                ).scalar()
                raise Conflict(
                    f"point ({name!r}, step {step}) is stored with value {stored!r}, "
                    f"not {points[(name, step)]!r}"
                ) from None
        if not found:
            raise NotFound(f"run {rid} not found")
        return int(new)

    @staticmethod
    def _check_stored(conn: Connection, rid: int, points: dict[tuple[str, int], float]) -> None:
        for chunk in _chunks(list(points)):
            stored = conn.execute(
                select(MetricPointRow.name, MetricPointRow.step, MetricPointRow.value).where(
                    MetricPointRow.run_id == rid,
                    tuple_(MetricPointRow.name, MetricPointRow.step).in_(chunk),
                )
            )
            for name, step, value in stored:
                if value != points[(name, step)]:
                    # Raising rolls the whole batch back: all-or-nothing.
                    raise Conflict(
                        f"point ({name!r}, step {step}) is stored with value {value!r}, "
                        f"not {points[(name, step)]!r}"
                    )

    def _insert_points(
        self, conn: Connection, rid: int, points: dict[tuple[str, int], float]
    ) -> int:
        """Insert what is new into run ``rid`` (NotFound without it); how many were new. (SQLite:
        Postgres appends in one statement, see ``_append_postgres``.)"""
        self._load_run(conn, rid)
        statement = (
            self._insert(MetricPointRow)
            .on_conflict_do_nothing(index_elements=["run_id", "name", "step"])
            .returning(MetricPointRow.id)
        )
        values = [{"run_id": rid, "name": n, "step": s, "value": v} for (n, s), v in points.items()]
        return len(conn.execute(statement, values).all())

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

    def metric_series(
        self, run_id: str, *, max_points: int = 500, names: Sequence[str] | None = None
    ) -> dict[str, list[SeriesPoint]]:
        rid = _parse_id(run_id, "run")
        if max_points < 1:
            raise InvalidInput.at(("query", "max_points"), "max_points must be at least 1")
        wanted = sorted(set(names)) if names is not None else None
        series: dict[str, list[SeriesPoint]] = {}
        # One snapshot: points appended meanwhile must not slip past the counts read first.
        with self._read(snapshot=True) as conn:
            self._load_run(conn, rid)
            if wanted == []:
                return series
            stats = self._series_stats(conn, rid, wanted)
            small = [name for name, (count, _, _) in stats.items() if count <= max_points]
            large = [name for name, (count, _, _) in stats.items() if count > max_points]
            for chunk in _chunks(small):
                rows = conn.execute(
                    select(MetricPointRow.name, MetricPointRow.step, MetricPointRow.value)
                    .where(MetricPointRow.run_id == rid, MetricPointRow.name.in_(list(chunk)))
                    .order_by(MetricPointRow.name, MetricPointRow.step)
                )
                for name, step, value in rows:
                    series.setdefault(name, []).append(SeriesPoint(step, value, value, value))
            for chunk in _chunks(large, _BUCKETED_NAMES):
                query = self._bucket_query(rid, {n: stats[n] for n in chunk}, max_points)
                for name, step, mean, low, high in conn.execute(query):
                    series.setdefault(name, []).append(SeriesPoint(step, mean, low, high))
        return {name: series[name] for name in sorted(series)}

    @staticmethod
    def _series_stats(
        conn: Connection, rid: int, names: list[str] | None
    ) -> dict[str, tuple[int, int, int]]:
        """Per metric name of the run (among ``names``): its count, min step and max step."""
        query = (
            select(
                MetricPointRow.name,
                func.count(),
                func.min(MetricPointRow.step),
                func.max(MetricPointRow.step),
            )
            .where(MetricPointRow.run_id == rid)
            .group_by(MetricPointRow.name)
        )
        queries = (
            [query]
            if names is None
            else [query.where(MetricPointRow.name.in_(list(chunk))) for chunk in _chunks(names)]
        )
        return {
            name: (count, low, high)
            for each in queries
            for name, count, low, high in conn.execute(each)
        }

    @staticmethod
    def _bucket_query(
        rid: int, stats: dict[str, tuple[int, int, int]], max_points: int
    ) -> Select[Any]:
        """One grouped query over every name in ``stats``: per name and bucket, the last step,
        the mean, the min and the max, ordered by name and step.

        Each name's bounds come in as a small derived table (``VALUES`` with column names is not
        portable: SQLite has no column list on a derived table). The bucket of step ``s`` is
        ``((s - lo) / d) * n / slots`` with ``slots = (hi - lo) / d + 1``, all in integer
        division, which truncates on both backends (BIGINT / BIGINT) and so is the floor here
        (nothing is negative); with ``d = 1`` (see ``_bucket_divisor``) that is
        ``(s - lo) * n // (hi - lo + 1)``, always within ``[0, n)``."""
        rows = [
            select(
                literal(name, String).label("name"),
                literal(low, BigInteger).label("low"),
                literal(high, BigInteger).label("high"),
                literal(divisor, BigInteger).label("divisor"),
                literal((high - low) // divisor + 1, BigInteger).label("slots"),
            )
            for name, (_, low, high) in stats.items()
            for divisor in [_bucket_divisor(high - low, max_points)]
        ]
        bounds = (rows[0] if len(rows) == 1 else union_all(*rows)).subquery("bounds")
        offset = (MetricPointRow.step - bounds.c.low) // bounds.c.divisor
        bucket = offset * literal(max_points, BigInteger) // bounds.c.slots
        last_step = func.max(MetricPointRow.step).label("last_step")
        return (
            select(
                MetricPointRow.name,
                last_step,
                func.avg(MetricPointRow.value),
                func.min(MetricPointRow.value),
                func.max(MetricPointRow.value),
            )
            .join(bounds, bounds.c.name == MetricPointRow.name)
            .where(
                MetricPointRow.run_id == rid,
                # Within the bounds read: the buckets stay in range whatever happens meanwhile.
                MetricPointRow.step.between(bounds.c.low, bounds.c.high),
            )
            .group_by(MetricPointRow.name, bucket)
            .order_by(MetricPointRow.name, last_step)
        )
