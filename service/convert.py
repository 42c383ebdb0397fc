"""Store records -> wire schemas."""

from __future__ import annotations

from mixopt import schemas
from service.store import ExperimentRecord, PointRecord, RunRecord, TokenRecord
from service.store.base import FitRecord, WeightsRecord

__all__ = ["experiment_out", "fit_out", "point_out", "run_out", "token_out", "weights_out"]


def experiment_out(record: ExperimentRecord) -> schemas.Experiment:
    return schemas.Experiment(
        id=record.id,
        name=record.name,
        mode=record.mode,
        method=record.method,
        domains=[schemas.Domain(**d) for d in record.domains],
        objective=schemas.Objective(**record.objective),
        config=record.config,
        status=record.status,
        created_at=record.created_at,
        counts=schemas.RunCounts(**record.counts),
    )


def run_out(record: RunRecord) -> schemas.Run:
    return schemas.Run(
        id=record.id,
        experiment_id=record.experiment_id,
        status=record.status,
        weights=record.weights,
        params=record.params,
        tags=record.tags,
        excluded=record.excluded,
        worker=record.worker,
        lease_expires_at=record.lease_expires_at,
        attempt=record.attempt,
        metrics=record.metrics,
        external_id=record.external_id,
        created_at=record.created_at,
        updated_at=record.updated_at,
        reason=record.reason,
    )


def point_out(record: PointRecord) -> schemas.StoredPoint:
    return schemas.StoredPoint(name=record.name, step=record.step, value=record.value)


def token_out(record: TokenRecord) -> schemas.Token:
    return schemas.Token(
        id=record.id,
        name=record.name,
        scope=record.scope,
        created_at=record.created_at,
        expires_at=record.expires_at,
        revoked_at=record.revoked_at,
    )


def fit_out(record: FitRecord) -> schemas.FitReport:
    return schemas.FitReport.model_validate(
        {
            **record.report,
            "id": record.id,
            "experiment_id": record.experiment_id,
            "model": record.model,
            "requested": record.requested,
            "n_runs": record.n_runs,
            "fitted_at": record.fitted_at,
        }
    )


def weights_out(record: WeightsRecord) -> schemas.Weights:
    return schemas.Weights(
        run_id=record.run_id,
        weights=record.weights,
        version=record.version,
        step=record.step,
        train_steps=record.train_steps,
        phase=record.phase,
    )
