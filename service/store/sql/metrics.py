"""Metric points: appended once per (name, step), read by step."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, select, text, tuple_

from mixopt.errors import Conflict, InvalidInput
from service.store.base import Page, PointRecord
from service.store.cursor import decode_cursor
from service.store.models import MetricPointRow
from service.store.sql._base import SqlStoreBase, _chunks, _page, _parse_id

__all__ = ["MetricStore"]


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
