"""ORM models: the schema. Alembic revisions in ``migrations/versions`` create it; a change here
needs a new revision (a landed revision is never edited)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "ApiToken",
    "Base",
    "ExperimentRow",
    "FeedbackRow",
    "FitRow",
    "MetricPointRow",
    "MixerStateRow",
    "RunRow",
    "WeightVersionRow",
]

# Readable, stable constraint names (Alembic needs them to alter tables on SQLite).
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Json = JSON().with_variant(JSONB(), "postgresql")
# SQLite has no big integers as autoincrement keys; there an INTEGER key is 64-bit anyway.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, whatever the backend stores (SQLite keeps naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: Json, datetime: UtcDateTime()}


class ExperimentRow(Base):
    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    mode: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(64))
    domains: Mapped[list[dict[str, Any]]] = mapped_column(Json)
    objective: Mapped[dict[str, Any]]
    config: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    archived_at: Mapped[datetime | None]
    # When PATCH last changed the objective: fits started before it are on another one.
    objective_changed_at: Mapped[datetime | None]
    # The archive an imported experiment came from (its ``origin``) and a digest of the
    # archive's content: importing the same archive again finds this experiment.
    imported_from: Mapped[str | None] = mapped_column(String(64), unique=True)
    import_digest: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        # Names are unique among active experiments only: an archived name can be reused.
        Index(
            "uq_experiments_active_name",
            "name",
            unique=True,
            postgresql_where=text("status = 'active'"),
            sqlite_where=text("status = 'active'"),
        ),
    )


class RunRow(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    experiment_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("experiments.id", ondelete="CASCADE")
    )
    status: Mapped[str] = mapped_column(String(16))
    weights: Mapped[dict[str, Any]]
    params: Mapped[dict[str, Any]]
    tags: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any]]
    excluded: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(128))
    # The holder of the last lease: it may still complete the run while nobody re-claimed it.
    last_worker: Mapped[str | None] = mapped_column(String(128))
    lease_seconds: Mapped[int | None] = mapped_column(Integer)
    lease_expires_at: Mapped[datetime | None]
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    external_id: Mapped[str | None] = mapped_column(String(256))
    request_id: Mapped[str | None] = mapped_column(String(128))
    request_index: Mapped[int | None] = mapped_column(Integer)
    name: Mapped[str | None] = mapped_column(String(128))  # online training runs
    total_steps: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (
        Index("ix_runs_experiment_status", "experiment_id", "status", "id"),
        UniqueConstraint("experiment_id", "external_id"),
        UniqueConstraint("experiment_id", "request_id", "request_index"),
    )


class MetricPointRow(Base):
    __tablename__ = "metric_points"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(BigId, ForeignKey("runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    step: Mapped[int] = mapped_column(BigInteger)
    value: Mapped[float] = mapped_column(Float(precision=53))

    __table_args__ = (
        UniqueConstraint("run_id", "name", "step"),
        Index("ix_metric_points_run_step", "run_id", "step", "name"),
    )


class FitRow(Base):
    __tablename__ = "fits"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    experiment_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("experiments.id", ondelete="CASCADE"), index=True
    )
    model: Mapped[str] = mapped_column(String(64))
    requested: Mapped[str] = mapped_column(String(64))
    n_runs: Mapped[int] = mapped_column(Integer)
    report: Mapped[dict[str, Any]]
    recommendation: Mapped[dict[str, Any] | None]
    model_blob: Mapped[bytes | None] = mapped_column(LargeBinary)
    # How model_blob is encoded; the store keeps the bytes and never decodes them.
    model_format: Mapped[str | None] = mapped_column(String(64))
    fitted_at: Mapped[datetime]
    # A fit is stored when it starts (running), then completed or failed with a reason. The
    # server instance running it (``owner``) beats ``heartbeat_at`` while it lives: a running
    # fit whose heartbeat is stale was interrupted and is failed by whichever replica sees it.
    status: Mapped[str] = mapped_column(String(16), server_default="completed")
    reason: Mapped[str | None] = mapped_column(Text)
    stage: Mapped[str | None] = mapped_column(String(200))
    owner: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]


class MixerStateRow(Base):
    """An online run's mixer state, updated by compare-and-swap on ``version``."""

    __tablename__ = "mixer_states"

    run_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[dict[str, Any]]
    frozen: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime]


class WeightVersionRow(Base):
    """Every weights version an online run was served, with the step it applies from."""

    __tablename__ = "weight_versions"

    run_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger)
    weights: Mapped[dict[str, Any]]
    phase: Mapped[str] = mapped_column(String(32))
    train_steps: Mapped[int | None] = mapped_column(BigInteger)
    state: Mapped[dict[str, Any]]
    # A resume at step S supersedes the versions that applied after S; they stay in history.
    superseded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime]

    __table_args__ = (Index("ix_weight_versions_run_step", "run_id", "step"),)


class FeedbackRow(Base):
    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(BigId, ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(BigInteger)
    version: Mapped[int | None] = mapped_column(Integer)
    body: Mapped[dict[str, Any]]
    superseded: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]

    __table_args__ = (
        Index(
            "uq_feedback_live_step",
            "run_id",
            "step",
            unique=True,
            postgresql_where=text("NOT superseded"),
            sqlite_where=text("NOT superseded"),
        ),
    )


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    scope: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256, hex
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
