"""Runs and the queue: add, import, list; claim, heartbeat, complete, fail, release, exclude,
expire."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, insert, select, update
from sqlalchemy.exc import IntegrityError

from mixopt.errors import Conflict, LeaseLost
from service.store.base import NewRun, Page, RunRecord
from service.store.models import ExperimentRow, MixerStateRow, RunRow
from service.store.sql._base import SqlStoreBase, _chunks, _keyset, _page, _parse_id

__all__ = ["QueueStore"]


class QueueStore(SqlStoreBase):
    def add_runs(
        self, experiment_id: str, runs: Sequence[NewRun], request_id: str | None = None
    ) -> list[RunRecord]:
        eid = _parse_id(experiment_id, "experiment")
        now = self._clock()

        def earlier(conn: Connection, key: str) -> list[RunRecord] | None:
            return self._runs_by_request(conn, eid, key)

        def insert_runs(conn: Connection) -> list[RunRecord]:
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
            rows = conn.execute(select(RunRow).where(RunRow.id.in_(ids)).order_by(RunRow.id)).all()
            return [self._run(r) for r in rows]

        return self._insert_once(eid, request_id, earlier, insert_runs)

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

        def earlier(conn: Connection, external_id: str) -> tuple[RunRecord, bool] | None:
            stored = conn.execute(
                select(RunRow).where(RunRow.experiment_id == eid, RunRow.external_id == external_id)
            ).first()
            return (self._same_import(stored, run), False) if stored is not None else None

        def insert_run(conn: Connection) -> tuple[RunRecord, bool]:
            new_id = conn.execute(
                insert(RunRow).values(**self._run_values(run, eid, now)).returning(RunRow.id)
            ).scalar_one()
            return self._run(self._load_run(conn, new_id)), True

        return self._insert_once(eid, run.external_id, earlier, insert_run)

    def import_runs(
        self, experiment_id: str, runs: Sequence[NewRun]
    ) -> list[tuple[RunRecord, bool]]:
        eid = _parse_id(experiment_id, "experiment")
        now = self._clock()
        try:
            return self._import_batch(eid, runs, now)
        except IntegrityError:
            # A concurrent import committed one of these external_ids between our read and our
            # insert, and all of ours rolled back: a second transaction sees it as stored. (If
            # it breaks a constraint again, that is another one, and it is raised.)
            return self._import_batch(eid, runs, now)

    def _stored_imports(
        self, conn: Connection, experiment_id: int, external_ids: Sequence[str]
    ) -> dict[str, Row[Any]]:
        """The runs stored under these external_ids, by external_id."""
        stored: dict[str, Row[Any]] = {}
        for chunk in _chunks(external_ids):
            query = select(RunRow).where(
                RunRow.experiment_id == experiment_id, RunRow.external_id.in_(chunk)
            )
            stored.update((row.external_id, row) for row in conn.execute(query))
        return stored

    def _insert_in_order(
        self, conn: Connection, values: Sequence[Mapping[str, Any]]
    ) -> list[Row[Any]]:
        """Insert runs, a multi-row INSERT per 1,000; answer the stored rows in their order."""
        if self._dialect == "postgresql":
            # SQLAlchemy orders the RETURNING rows by a sentinel of its own, in one
            # INSERT ... SELECT ... ORDER BY per page of rows.
            query = insert(RunRow).returning(*RunRow.__table__.c, sort_by_parameter_order=True)
            return list(conn.execute(query, values).all())
        # SQLite: for that order SQLAlchemy would insert row by row. Unordered, it sends one
        # multi-row INSERT per 1,000 rows (its "insertmanyvalues"), whose RETURNING rows come in
        # no set order; but SQLite numbers them (max rowid + 1) in the order of the VALUES.
        query = insert(RunRow).returning(*RunRow.__table__.c)
        return sorted(conn.execute(query, values).all(), key=lambda row: int(row.id))

    def _import_batch(
        self, eid: int, runs: Sequence[NewRun], now: datetime
    ) -> list[tuple[RunRecord, bool]]:
        with self._write() as conn:
            self._active_experiment(conn, eid)
            keys = list(dict.fromkeys(r.external_id for r in runs if r.external_id is not None))
            stored = self._stored_imports(conn, eid, keys)
            # Inserted: every run without an external_id and the first of each external_id not
            # stored yet. The others repeat a run, stored before (checked first: a conflict
            # costs no insert) or earlier in this batch.
            fresh: list[int] = []
            seen = set(stored)
            for i, run in enumerate(runs):
                if run.external_id is None or run.external_id not in seen:
                    fresh.append(i)
                    if run.external_id is not None:
                        seen.add(run.external_id)
                elif run.external_id in stored:
                    self._same_import(stored[run.external_id], run)  # Conflict: nothing stored
            inserted: dict[int, Row[Any]] = {}
            if fresh:
                rows = self._insert_in_order(
                    conn, [self._run_values(runs[i], eid, now) for i in fresh]
                )
                inserted = dict(zip(fresh, rows, strict=True))
                stored.update((row.external_id, row) for row in rows if row.external_id is not None)
            answers: list[tuple[RunRecord, bool]] = []
            for i, run in enumerate(runs):
                if i in inserted:
                    answers.append((self._run(inserted[i]), True))
                else:
                    assert run.external_id is not None
                    answers.append((self._same_import(stored[run.external_id], run), False))
            return answers

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
        query = select(RunRow).where(RunRow.experiment_id == eid)
        if status is not None:
            query = query.where(RunRow.status == status)
        if excluded is not None:
            query = query.where(RunRow.excluded == excluded)
        query = _keyset(query, RunRow.id, cursor, limit)
        with self._read() as conn:
            self._load_experiment(conn, eid)
            rows = conn.execute(query).all()
        return _page(rows, limit, self._run)

    # --- the queue ----------------------------------------------------------------------------

    def _update_run(self, conn: Connection, rid: int, **values: Any) -> RunRecord:
        """Set ``values`` on the run and answer it as it now is."""
        conn.execute(update(RunRow).where(RunRow.id == rid).values(**values))
        return self._run(self._load_run(conn, rid))

    @staticmethod
    def _check_holder(row: Row[Any], worker: str) -> None:
        """``LeaseLost`` unless ``worker`` holds the lease, or held the last one and nobody
        re-claimed the run."""
        if row.status == "running":
            held = row.worker == worker
        else:
            held = row.status == "pending" and row.worker is None and row.last_worker == worker
        if not held:
            raise LeaseLost(f"worker {worker!r} does not hold the lease of run {row.id}")

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
            return self._update_run(
                conn,
                run_id,
                status="running",
                worker=worker,
                last_worker=worker,
                lease_seconds=lease_seconds,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                updated_at=now,
            )

    def heartbeat(self, run_id: str, worker: str, lease_seconds: int | None = None) -> RunRecord:
        rid = _parse_id(run_id, "run")
        now = self._clock()
        with self._write() as conn:
            row = self._load_run(conn, rid, lock=True)
            if row.status != "running" or row.worker != worker:
                raise LeaseLost(f"worker {worker!r} does not hold the lease of run {rid}")
            seconds = lease_seconds or row.lease_seconds or 600
            return self._update_run(
                conn,
                rid,
                lease_seconds=seconds,
                lease_expires_at=now + timedelta(seconds=seconds),
                updated_at=now,
            )

    def complete(self, run_id: str, metrics: Mapping[str, float], worker: str | None) -> RunRecord:
        rid = _parse_id(run_id, "run")
        now = self._clock()
        with self._write() as conn:
            # An online run's mixer state is locked before the run, in the order feedback and
            # resume take them (state, then the run): the other order deadlocks with them.
            conn.execute(
                select(MixerStateRow.run_id).where(MixerStateRow.run_id == rid).with_for_update()
            )
            row = self._load_run(conn, rid, lock=True)
            if row.status == "completed":
                if row.metrics != dict(metrics):
                    raise Conflict(f"run {rid} is already completed with other metrics")
                return self._run(row)
            if row.status == "failed":
                raise Conflict(f"run {rid} has failed; it cannot be completed")
            if worker is not None:
                self._check_holder(row, worker)
            completed = self._update_run(
                conn,
                rid,
                status="completed",
                metrics=dict(metrics),
                worker=None,
                lease_expires_at=None,
                # An earlier attempt's failure is history once the run completes; the reason
                # of an exclusion still applies.
                reason=row.reason if row.excluded else None,
                updated_at=now,
            )
            # An online run's mixer state is frozen with it (no-op for offline runs).
            conn.execute(
                update(MixerStateRow)
                .where(MixerStateRow.run_id == rid)
                .values(frozen=True, updated_at=now)
            )
            return completed

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
                self._check_holder(row, worker)
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
            return self._update_run(conn, rid, **values)

    def retry(self, run_id: str) -> RunRecord:
        rid = _parse_id(run_id, "run")
        now = self._clock()
        with self._write() as conn:
            row = self._load_run(conn, rid, lock=True)
            if self._load_experiment(conn, row.experiment_id).mode != "offline":
                raise Conflict(f"run {rid} is an online training run; only offline runs retry")
            if row.status != "failed":
                raise Conflict(f"run {rid} is {row.status}; only a failed run can be retried")
            return self._update_run(
                conn,
                rid,
                status="pending",
                attempt=1,
                worker=None,
                lease_expires_at=None,
                reason=None,
                updated_at=now,
            )

    def release(self, run_id: str, worker: str) -> RunRecord:
        rid = _parse_id(run_id, "run")
        now = self._clock()
        with self._write() as conn:
            row = self._load_run(conn, rid, lock=True)
            self._check_holder(row, worker)
            if row.status != "running":
                return self._run(row)
            return self._update_run(
                conn, rid, status="pending", worker=None, lease_expires_at=None, updated_at=now
            )

    def exclude(self, run_id: str, excluded: bool, reason: str | None) -> RunRecord:
        rid = _parse_id(run_id, "run")
        now = self._clock()
        with self._write() as conn:
            self._load_run(conn, rid, lock=True)
            return self._update_run(conn, rid, excluded=excluded, reason=reason, updated_at=now)
