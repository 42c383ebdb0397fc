"""Persistence: the Store interface and its SQL implementation."""

from __future__ import annotations

from service.store.base import (
    ExperimentRecord,
    FeedbackRecord,
    NewExperiment,
    NewFit,
    NewOnlineRun,
    NewRun,
    NewVersion,
    Page,
    PointRecord,
    RunRecord,
    SeriesPoint,
    Store,
    StoredModel,
    TokenRecord,
)
from service.store.sql import SqlStore, make_engine

__all__ = [
    "ExperimentRecord",
    "FeedbackRecord",
    "NewExperiment",
    "NewFit",
    "NewOnlineRun",
    "NewRun",
    "NewVersion",
    "Page",
    "PointRecord",
    "RunRecord",
    "SeriesPoint",
    "SqlStore",
    "Store",
    "StoredModel",
    "TokenRecord",
    "make_engine",
]
