"""Persistence: the Store interface and its SQL implementation."""

from __future__ import annotations

from service.store.base import (
    ExperimentRecord,
    NewExperiment,
    NewFit,
    NewOnlineRun,
    NewRun,
    NewVersion,
    Page,
    PointRecord,
    RunRecord,
    Store,
    StoredModel,
    TokenRecord,
)
from service.store.sql import SqlStore, make_engine

__all__ = [
    "ExperimentRecord",
    "NewExperiment",
    "NewFit",
    "NewOnlineRun",
    "NewRun",
    "NewVersion",
    "Page",
    "PointRecord",
    "RunRecord",
    "SqlStore",
    "Store",
    "StoredModel",
    "TokenRecord",
    "make_engine",
]
