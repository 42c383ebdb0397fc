"""Fits: the cross-validated report, the recommendation and the fitted model."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy import Row, insert, or_, select, update

from mixopt.errors import NotFound
from service.store.base import FitRecord, NewFit, Page, StoredModel
from service.store.models import FitRow
from service.store.sql._base import SqlStoreBase, _keyset, _page, _parse_id

__all__ = ["FitStore"]


class FitStore(SqlStoreBase):
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
            status=row.status,
            reason=row.reason,
            stage=row.stage,
            started_at=row.started_at,
            finished_at=row.finished_at,
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
        FitRow.status,
        FitRow.reason,
        FitRow.stage,
        FitRow.started_at,
        FitRow.finished_at,
    )

    def add_fit(self, experiment_id: str, fit: NewFit) -> FitRecord:
        now = self._clock()
        return self._insert_fit(
            experiment_id,
            requested=fit.requested,
            **_result(fit),
            fitted_at=now,
            started_at=now,
            finished_at=now,
        )

    def start_fit(self, experiment_id: str, requested: str, owner: str) -> FitRecord:
        now = self._clock()
        return self._insert_fit(
            experiment_id,
            model=requested,
            requested=requested,
            n_runs=0,
            report={},
            recommendation=None,
            status="running",
            owner=owner,
            fitted_at=now,
            started_at=now,
            heartbeat_at=now,
        )

    def _insert_fit(self, experiment_id: str, **values: Any) -> FitRecord:
        eid = _parse_id(experiment_id, "experiment")
        with self._write() as conn:
            self._load_experiment(conn, eid)
            row = conn.execute(
                insert(FitRow).values(experiment_id=eid, **values).returning(*self._FIT_COLUMNS)
            ).one()
        return self._fit(row)

    def complete_fit(self, fit_id: str, fit: NewFit) -> FitRecord:
        now = self._clock()
        return self._finish_fit(
            fit_id, **_result(fit), status="completed", stage=None, fitted_at=now, finished_at=now
        )

    def fail_fit(self, fit_id: str, reason: str) -> FitRecord:
        return self._finish_fit(
            fit_id, status="failed", reason=reason, stage=None, finished_at=self._clock()
        )

    def _finish_fit(self, fit_id: str, **values: Any) -> FitRecord:
        """Update a running fit; one that is no longer running is left as it is."""
        fid = _parse_id(fit_id, "fit")
        with self._write() as conn:
            row = conn.execute(
                update(FitRow)
                .where(FitRow.id == fid, FitRow.status == "running")
                .values(**values)
                .returning(*self._FIT_COLUMNS)
            ).first()
        return self.get_fit(fit_id) if row is None else self._fit(row)

    def beat_fits(self, owner: str, stages: Mapping[str, str | None]) -> None:
        if not stages:
            return
        now = self._clock()
        with self._write() as conn:
            for fit_id, stage in stages.items():
                conn.execute(
                    update(FitRow)
                    .where(
                        FitRow.id == _parse_id(fit_id, "fit"),
                        FitRow.owner == owner,
                        FitRow.status == "running",
                    )
                    .values(heartbeat_at=now, stage=None if stage is None else stage[:200])
                )

    def fail_abandoned_fits(
        self, reason: str, *, stale_seconds: float, owner: str | None = None
    ) -> list[str]:
        now = self._clock()
        abandoned = or_(
            FitRow.heartbeat_at.is_(None),
            FitRow.heartbeat_at < now - timedelta(seconds=stale_seconds),
        )
        if owner is not None:
            abandoned = or_(abandoned, FitRow.owner == owner)
        with self._write() as conn:
            ids = conn.execute(
                update(FitRow)
                .where(FitRow.status == "running", abandoned)
                .values(status="failed", reason=reason, stage=None, finished_at=now)
                .returning(FitRow.id)
            ).scalars()
            return sorted(str(i) for i in ids)

    def get_fit(self, fit_id: str) -> FitRecord:
        fid = _parse_id(fit_id, "fit")
        with self._read() as conn:
            row = conn.execute(select(*self._FIT_COLUMNS).where(FitRow.id == fid)).first()
        if row is None:
            raise NotFound(f"fit {fid} not found")
        return self._fit(row)

    def list_fits(self, experiment_id: str, *, limit: int, cursor: str | None) -> Page[FitRecord]:
        eid = _parse_id(experiment_id, "experiment")
        query = _keyset(
            select(*self._FIT_COLUMNS).where(FitRow.experiment_id == eid),
            FitRow.id,
            cursor,
            limit,
            descending=True,
        )
        with self._read() as conn:
            self._load_experiment(conn, eid)
            rows = conn.execute(query).all()
        return _page(rows, limit, self._fit)

    def latest_fit(self, experiment_id: str) -> tuple[FitRecord, StoredModel | None] | None:
        eid = _parse_id(experiment_id, "experiment")
        with self._read() as conn:
            self._load_experiment(conn, eid)
            row = conn.execute(
                select(*self._FIT_COLUMNS, FitRow.model_blob, FitRow.model_format)
                .where(FitRow.experiment_id == eid, FitRow.status == "completed")
                .order_by(FitRow.id.desc())
                .limit(1)
            ).first()
        if row is None:
            return None
        stored = None if row.model_blob is None else StoredModel(row.model_format, row.model_blob)
        return self._fit(row), stored


def _result(fit: NewFit) -> dict[str, Any]:
    """The columns a fit's result fills in."""
    return {
        "model": fit.model,
        "n_runs": fit.n_runs,
        "report": dict(fit.report),
        "recommendation": None if fit.recommendation is None else dict(fit.recommendation),
        "model_blob": fit.model_data,
        "model_format": fit.model_format,
    }
