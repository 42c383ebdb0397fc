"""The SQL implementation of the Store: SQLite (embedded default) and Postgres (production).

One module per aggregate (experiments, queue, metrics, online, fits, tokens), each a mixin over
``SqlStoreBase`` (``_base``: engine, transactions, shared rows); ``SqlStore`` composes them.

Concurrency, in short:
- Postgres: READ COMMITTED; claims lock one pending row with ``FOR UPDATE SKIP LOCKED``; other
  state changes lock their row with ``FOR UPDATE``; metric points rely on the unique index.
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

__all__ = ["SqlStore", "hash_token", "make_engine", "utcnow"]


class SqlStore(ExperimentStore, QueueStore, MetricStore, OnlineStore, FitStore, TokenStore):
    """The Store on SQLAlchemy: every aggregate's methods over one engine (see ``SqlStoreBase``)."""
