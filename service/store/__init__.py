"""Persistence: the Store interface and its SQL implementation."""

from __future__ import annotations

from service.store.base import (
    ExperimentRecord,
    NewExperiment,
    NewOnlineRun,
    NewRun,
    NewVersion,
    Page,
    PointRecord,
    RunRecord,
    Store,
    TokenRecord,
)
from service.store.sql import SqlStore, make_engine

__all__ = [
    "ExperimentRecord",
    "NewExperiment",
    "NewOnlineRun",
    "NewRun",
    "NewVersion",
    "Page",
    "PointRecord",
    "RunRecord",
    "SqlStore",
    "Store",
    "TokenRecord",
    "make_engine",
]
