"""The SQL implementation of the Store: SQLite (embedded default) and Postgres (production).

One module per aggregate (experiments, queue, metrics, online, fits, tokens; transfer: whole
experiments in and out of archives), each a mixin over
``SqlStoreBase`` (``_base``: engine, transactions, shared rows); ``SqlStore`` composes them.

Concurrency, in short:
- Postgres: READ COMMITTED; claims lock one pending row with ``FOR UPDATE SKIP LOCKED``; other
  state changes lock their row with ``FOR UPDATE``; metric points rely on the unique index.
  Locks are taken in one order, or two transactions can deadlock: an online run's mixer state
  before its run row; a batch's metric points in (name, step) order.
- SQLite: WAL, a busy timeout, and ``BEGIN IMMEDIATE`` for every write transaction, so writers
  queue instead of failing with "database is locked" halfway through.
Every method is one transaction, committed before it returns.
"""

from __future__ import annotations

from service.store.sql._base import make_engine, utcnow
from service.store.sql.experiments import ExperimentStore
from service.store.sql.fits import FitStore
from service.store.sql.metrics import MetricStore
from service.store.sql.online import OnlineStore
from service.store.sql.queue import QueueStore
from service.store.sql.tokens import TokenStore, hash_token
from service.store.sql.transfer import TransferStore

__all__ = ["SqlStore", "hash_token", "make_engine", "utcnow"]


class SqlStore(
    TransferStore, ExperimentStore, QueueStore, MetricStore, OnlineStore, FitStore, TokenStore
):
    """The Store on SQLAlchemy: every aggregate's methods over one engine (see ``SqlStoreBase``)."""
