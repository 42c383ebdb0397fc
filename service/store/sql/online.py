"""Online runs: the mixer state (compare-and-swap on its version), its weights versions, the
feedback folded into it, and resume."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, NoReturn

from sqlalchemy import Connection, Row, Select, case, func, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError

from mixopt.errors import Conflict, NotFound
from service.store.base import (
    FeedbackContext,
    FeedbackRecord,
    NewOnlineRun,
    NewRun,
    NewVersion,
    OnlineState,
    Page,
    RunRecord,
    StaleVersion,
    WeightsRecord,
)
from service.store.cursor import decode_cursor
from service.store.models import ExperimentRow, FeedbackRow, MixerStateRow, RunRow, WeightVersionRow
from service.store.sql._base import _WEIGHTS_CHANGED, SqlStoreBase, _keyset, _page, _parse_id
from service.store.weights_cache import CHANNEL as WEIGHTS_CHANNEL

__all__ = ["OnlineStore"]


class OnlineStore(SqlStoreBase):
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
        self, conn: Connection, rid: int, new: NewVersion, *, number: int, step: int, now: datetime
    ) -> WeightsRecord:
        """Write version ``number``, serving from ``step``, and make its weights the run's."""
        row = conn.execute(
            insert(WeightVersionRow)
            .values(
                run_id=rid,
                version=number,
                step=step,
                weights=dict(new.weights),
                phase=new.phase,
                train_steps=new.train_steps,
                state=dict(new.state),
                superseded=False,
                created_at=now,
            )
            .returning(*WeightVersionRow.__table__.columns)
        ).one()
        conn.execute(
            update(RunRow).where(RunRow.id == rid).values(weights=dict(new.weights), updated_at=now)
        )
        conn.info.setdefault(_WEIGHTS_CHANGED, set()).add(rid)
        if self._dialect == "postgresql":
            # Delivered at commit to every replica's weights cache (and only if it commits).
            conn.execute(select(func.pg_notify(WEIGHTS_CHANNEL, str(rid))))
        return self._weights(row)

    def start_online_run(
        self, experiment_id: str, run: NewOnlineRun, first: NewVersion
    ) -> tuple[RunRecord, bool]:
        eid = _parse_id(experiment_id, "experiment")
        now = self._clock()

        def earlier(conn: Connection, key: str) -> tuple[RunRecord, bool] | None:
            runs = self._runs_by_request(conn, eid, key)
            return (runs[0], False) if runs is not None else None

        def insert_run(conn: Connection) -> tuple[RunRecord, bool]:
            values = {
                **self._run_values(
                    NewRun(first.weights, tags=run.tags, status="running"), eid, now
                ),
                "name": run.name,
                "total_steps": run.total_steps,
                "request_id": run.request_id,
                "request_index": 0 if run.request_id is not None else None,
            }
            run_id = conn.execute(insert(RunRow).values(**values).returning(RunRow.id)).scalar_one()
            conn.execute(
                insert(MixerStateRow).values(
                    run_id=run_id, version=1, state=dict(first.state), frozen=False, updated_at=now
                )
            )
            self._add_version(conn, run_id, first, number=1, step=0, now=now)
            return self._run(self._load_run(conn, run_id)), True

        return self._insert_once(eid, run.request_id, earlier, insert_run)

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
            self._not_online(conn, rid)
        return row

    def _not_online(self, conn: Connection, rid: int) -> NoReturn:
        """Raise the right ``NotFound`` for a run that has no mixer state."""
        self._load_run(conn, rid)  # unknown runs
        raise NotFound(f"run {rid} is not an online training run")

    @staticmethod
    def _in_effect(rid: int, at_step: int | None) -> Select[Any]:
        """The run's live version in effect at ``at_step`` (None: the current one)."""
        query = (
            select(WeightVersionRow)
            .where(WeightVersionRow.run_id == rid, WeightVersionRow.superseded.is_(False))
            .order_by(WeightVersionRow.version.desc())
            .limit(1)
        )
        if at_step is not None:
            query = query.where(WeightVersionRow.step <= at_step)
        return query

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
        with self._read() as conn:
            row = conn.execute(self._in_effect(rid, at_step)).first()
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
        query = _keyset(
            select(WeightVersionRow).where(WeightVersionRow.run_id == rid),
            WeightVersionRow.version,
            cursor,
            limit,
        )
        with self._read() as conn:
            self._online_state(conn, rid)
            rows = conn.execute(query).all()
        return _page(rows, limit, self._weights, key=lambda r: [r.version])

    def feedback_history(
        self, run_id: str, *, limit: int, cursor: str | None
    ) -> Page[FeedbackRecord]:
        rid = _parse_id(run_id, "run")
        query = (
            select(
                FeedbackRow.id,
                FeedbackRow.step,
                FeedbackRow.version,
                FeedbackRow.body,
                FeedbackRow.superseded,
                FeedbackRow.created_at,
            )
            .where(FeedbackRow.run_id == rid)
            .order_by(FeedbackRow.step, FeedbackRow.id)
            .limit(limit + 1)
        )
        if cursor is not None:
            step, last_id = decode_cursor(cursor, (int, int))
            query = query.where(tuple_(FeedbackRow.step, FeedbackRow.id) > tuple_(step, last_id))
        with self._read() as conn:
            self._online_state(conn, rid)
            rows = conn.execute(query).all()
        return _page(
            rows,
            limit,
            lambda r: FeedbackRecord(r.step, r.version, r.body, r.superseded, r.created_at),
            key=lambda r: [r.step, r.id],
        )

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
                self._current_step(rid).label("current_step"),
            )
            .select_from(MixerStateRow)
            .join(RunRow, RunRow.id == MixerStateRow.run_id)
            .join(ExperimentRow, ExperimentRow.id == RunRow.experiment_id)
            .where(MixerStateRow.run_id == rid)
        )
        with self._read() as conn:
            row = conn.execute(query).first()
            if row is None:
                self._not_online(conn, rid)
        state = OnlineState(
            run_id=str(rid),
            experiment_id=str(row.id),
            version=row.state_version,
            state=row.state_body,
            frozen=row.state_frozen,
        )
        return FeedbackContext(
            state, self._experiment(row, {}), row.recorded, current_step=row.current_step
        )

    @staticmethod
    def _current_step(rid: int) -> Any:
        """The step run ``rid`` has reached: its latest live feedback, or the step its current
        weights apply from (after a resume), whichever is later; correlated to its state row."""
        last_feedback = (
            select(func.max(FeedbackRow.step))
            .where(FeedbackRow.run_id == rid, FeedbackRow.superseded.is_(False))
            .scalar_subquery()
        )
        current_version = (
            select(WeightVersionRow.step)
            .where(
                WeightVersionRow.run_id == rid,
                WeightVersionRow.version == MixerStateRow.version,
            )
            .scalar_subquery()
        )
        feedback_step = func.coalesce(last_feedback, 0)
        version_step = func.coalesce(current_version, 0)
        # max(a, b) is an aggregate on Postgres and greatest() does not exist on SQLite
        return case((feedback_step > version_step, feedback_step), else_=version_step)

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
        version: NewVersion,
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
                    .values(version=new_version, state=dict(version.state), updated_at=now)
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
                return self._add_version(conn, rid, version, number=new_version, step=step, now=now)
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
                self._not_online(conn, rid)
            if current.frozen:
                raise Conflict(f"run {rid} is completed; it cannot resume")
            reached = conn.execute(
                select(self._current_step(rid)).where(MixerStateRow.run_id == rid)
            ).scalar_one()
            if step > reached:
                raise Conflict(
                    f"run {rid} has reached step {reached}: it can resume from a step up to "
                    f"that, not {step}"
                )
            target = conn.execute(self._in_effect(rid, step)).one()
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
            resumed = NewVersion(target.state, target.weights, target.phase, target.train_steps)
            return self._add_version(conn, rid, resumed, number=new_version, step=step, now=now)
