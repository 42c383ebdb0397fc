"""Experiments: create, read, list, archive."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from mixopt.errors import Conflict
from service.store.base import ExperimentRecord, NewExperiment, Page
from service.store.models import ExperimentRow, RunRow, UtcDateTime
from service.store.sql._base import _MAX_ID, SqlStoreBase, _chunks, _keyset, _page, _parse_id

__all__ = ["ExperimentStore"]

_STATUSES = ("pending", "running", "completed", "failed")


class ExperimentStore(SqlStoreBase):
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
        query = select(ExperimentRow)
        if status is not None:
            query = query.where(ExperimentRow.status == status)
        query = _keyset(query, ExperimentRow.id, cursor, limit, descending=True)
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

    def update_experiment(
        self,
        experiment_id: str,
        *,
        name: str | None = None,
        objective: Mapping[str, Any] | None = None,
    ) -> ExperimentRecord:
        eid = _parse_id(experiment_id, "experiment")
        now = self._clock()
        try:
            with self._write() as conn:
                row = self._load_experiment(conn, eid, lock=True)
                values: dict[str, Any] = {}
                if name is not None and name != row.name:
                    values["name"] = name
                if objective is not None and dict(objective) != row.objective:
                    values.update(objective=dict(objective), objective_changed_at=now)
                if values:
                    conn.execute(
                        update(ExperimentRow)
                        .where(ExperimentRow.id == eid)
                        .values(**values, updated_at=now)
                    )
                    row = self._load_experiment(conn, eid)
                return self._experiment(row, self._counts(conn, [eid])[eid])
        except IntegrityError as exc:
            raise Conflict(f"an active experiment is already named {name!r}") from exc

    def last_activity(self, experiment_ids: Sequence[str]) -> dict[str, datetime]:
        ids = sorted({int(i) for i in experiment_ids if i.isdigit() and 1 <= int(i) <= _MAX_ID})
        latest = func.coalesce(
            func.max(RunRow.updated_at), ExperimentRow.updated_at, type_=UtcDateTime()
        )
        activity: dict[str, datetime] = {}
        with self._read() as conn:
            for chunk in _chunks(ids):
                rows = conn.execute(
                    select(ExperimentRow.id, latest)
                    .outerjoin(RunRow, RunRow.experiment_id == ExperimentRow.id)
                    .where(ExperimentRow.id.in_(list(chunk)))
                    .group_by(ExperimentRow.id, ExperimentRow.updated_at)
                )
                activity.update((str(eid), at) for eid, at in rows)
        return activity
