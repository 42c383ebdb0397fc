"""Store records and the mixers' results -> wire schemas: the only place that maps them."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from mixers import DomainSpace
from mixers.backtest import Backtest
from mixers.fitting import Fit
from mixers.recommendation import Prediction, Recommendation
from mixopt import schemas
from service.store import ExperimentRecord, PointRecord, RunRecord, TokenRecord
from service.store.base import FitRecord, WeightsRecord

__all__ = [
    "backtest_out",
    "experiment_out",
    "fit_out",
    "fit_report",
    "point_out",
    "recommendation_out",
    "run_out",
    "token_out",
    "weights_out",
]


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
        objective_changed_at=record.objective_changed_at,
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


def fit_out(record: FitRecord, *, stage: str | None = None) -> schemas.FitReport:
    """A stored fit; ``stage``: what a running fit is doing, if this process knows better than
    the store (the stage stored at the last heartbeat)."""
    progress = None
    if record.started_at is not None:
        end = record.finished_at or datetime.now(UTC)
        progress = schemas.FitProgress(
            elapsed_seconds=max(0.0, (end - record.started_at).total_seconds()),
            stage=(stage or record.stage) if record.status == "running" else None,
        )
    return schemas.FitReport.model_validate(
        {
            "cv": {"folds": 0},  # a running or failed fit has no report yet
            **record.report,
            "id": record.id,
            "experiment_id": record.experiment_id,
            "model": record.model,
            "requested": record.requested,
            "n_runs": record.n_runs,
            "fitted_at": record.fitted_at,
            "status": record.status,
            "reason": record.reason,
            "started_at": record.started_at,
            "finished_at": record.finished_at,
            "progress": progress,
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


def fit_report(fit: Fit) -> dict[str, Any]:
    """The FitReport fields a fit determines (not ``id``/``fitted_at``), as stored."""
    return {
        "model": fit.model,
        "requested": fit.requested,
        "n_runs": fit.n_runs,
        "cv": asdict(fit.cv),
        "candidates": [asdict(c) for c in fit.candidates],
        "importance": dict(fit.importance),
        "noise": asdict(fit.noise),
        "oof": [asdict(o) for o in fit.oof],
        "per_metric": [asdict(m) for m in fit.metric_models],
        "tied": list(fit.tied),
    }


def _predicted(prediction: Prediction) -> schemas.Predicted:
    return schemas.Predicted(value=prediction.value, low=prediction.low, high=prediction.high)


def recommendation_out(space: DomainSpace, rec: Recommendation) -> schemas.Recommendation:
    """A fit's recommendation (without its ``fit_id``, which the store gives)."""
    return schemas.Recommendation(
        weights=space.to_dict(rec.weights),
        params=dict(rec.params),
        predicted=_predicted(rec.predicted),
        baseline=None
        if rec.baseline is None
        else schemas.Baseline(
            weights=space.to_dict(rec.baseline.weights),
            params=dict(rec.baseline.params),
            predicted=_predicted(rec.baseline.predicted),
        ),
        p_better_than_baseline=rec.p_better_than_baseline,
        alternatives=[
            schemas.Alternative(
                weights=space.to_dict(alt.weights),
                params=dict(alt.params),
                predicted=_predicted(alt.predicted),
            )
            for alt in rec.alternatives
        ],
        model=rec.model,
        n_runs=rec.n_runs,
        search={k: v for k, v in asdict(rec.search).items() if v is not None},
        chosen=rec.chosen,
        best_run=None
        if rec.best_run is None
        else schemas.BestRun(
            run_id=rec.best_run.run_id,
            weights=space.to_dict(rec.best_run.weights),
            observed=rec.best_run.observed,
            predicted=_predicted(rec.best_run.predicted),
        ),
        reason=rec.reason,
    )


def backtest_out(result: Backtest, experiment_id: str) -> schemas.BacktestReport:
    return schemas.BacktestReport.model_validate(
        {**result.to_dict(), "experiment_id": experiment_id}
    )
