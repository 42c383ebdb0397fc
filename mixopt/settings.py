"""Service settings: command-line flags override ``MIXOPT_*`` environment variables, which
override these defaults."""

from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "is_loopback", "normalise_database_url"]


def normalise_database_url(url: str) -> str:
    """Accept the URLs people paste (``postgres://``, ``postgresql://``) and use psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MIXOPT_", extra="ignore")

    database_url: str = Field(
        default="sqlite:///mixopt.db",
        description="SQLAlchemy URL: a SQLite file (embedded default) or postgresql://...",
    )
    host: str = Field(default="127.0.0.1", description="address to bind")
    port: int = Field(default=8000, ge=0, le=65535, description="port to bind")
    no_auth: bool = Field(default=False, description="skip auth (only allowed on loopback)")
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, description="request size cap")
    max_import_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="size cap of an experiment archive sent to POST /experiments/import "
        "(bigger ones: mixopt experiment import --database-url)",
    )
    token_cache_seconds: float = Field(
        default=5.0, ge=0, description="how long a token lookup is cached in process"
    )
    lease_sweep_seconds: float = Field(
        default=15.0, gt=0, description="how often expired leases are returned to pending"
    )
    weights_cache: bool = Field(
        default=True,
        description="answer weights polls from memory, kept fresh by LISTEN/NOTIFY (Postgres)",
    )
    log_level: str = Field(default="info", description="uvicorn log level")
    fit_workers: int = Field(
        default=1,
        ge=0,
        description="worker processes that run fits, off the server process (a fit is "
        "CPU-bound for seconds to minutes); 0 runs fits in the server's threads",
    )
    fit_niceness: int = Field(
        default=10,
        ge=0,
        le=19,
        description="how much lower the fit workers' CPU priority is than the server's (Unix "
        "nice increment), so that fits take the CPU the requests leave; 0 keeps it equal",
    )
    db_pool_size: int = Field(
        default=20,
        ge=1,
        description="Postgres connections per server process, at most (a busy request waits "
        "for one, then answers 503): processes x this must stay under the server's "
        "max_connections",
    )
    auth_free_failures: int = Field(
        default=20,
        ge=0,
        description="failed authentications per minute from one address before each further "
        "refusal is slowed (by 0.1 s more each, up to 2 s); 0 turns the slowdown off",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="origins allowed to call the API from a browser (JSON list); none by default",
    )

    @field_validator("database_url")
    @classmethod
    def _normalise(cls, url: str) -> str:
        return normalise_database_url(url)
