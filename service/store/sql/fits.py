"""Fits: the cross-validated report, the recommendation and the fitted model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Row, insert, select

from mixopt.errors import NotFound
from service.store.base import FitRecord, Page
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
