"""The experiment archive: everything one experiment holds, as a versioned, data-only JSON
document (``mixopt experiment export``/``import``).

It is the contract between the store that exports and the store that imports, so it names what
an experiment *is* (runs, metric points, fits, online state and history), never the tables it
lives in. Ids in it are the source's; the importing store gives new ones and keeps the runs'
mapping for the references inside fits. A change to any model here is a new ``ARCHIVE_VERSION``.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

__all__ = [
    "ARCHIVE_FORMAT",
    "ARCHIVE_VERSION",
    "ArchivedExperiment",
    "ArchivedFeedback",
    "ArchivedFit",
    "ArchivedOnline",
    "ArchivedRun",
    "ArchivedVersion",
    "ExperimentArchive",
]

ARCHIVE_FORMAT: Final = "mixopt-experiment"
ARCHIVE_VERSION: Final = 1

# Read with ``model_validate_json``: strict JSON mode takes ISO 8601 times and base64 bytes.
Time = AwareDatetime
Json = dict[str, Any]
# The widths of the store's columns (Postgres refuses longer values; SQLite would keep them).
Str32 = Annotated[str, Field(max_length=32)]
Str64 = Annotated[str, Field(max_length=64)]
Str128 = Annotated[str, Field(max_length=128)]
Int32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


class _Part(BaseModel):
    # Strict and closed: an archive is written by mixopt, so anything else is a corrupt file.
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        allow_inf_nan=False,
        ser_json_bytes="base64",
        val_json_bytes="base64",
    )


class ArchivedExperiment(_Part):
    id: str
    name: Str128
    mode: Literal["offline", "online"]
    method: Str64
    domains: list[Json]
    objective: Json
    config: Json
    status: Literal["active", "archived"]
    created_at: Time
    updated_at: Time
    archived_at: Time | None = None
    objective_changed_at: Time | None = None


class ArchivedVersion(_Part):
    """One weights version of an online run, with the mixer state it was decided from."""

    version: Int32 = Field(ge=1)
    step: Int64 = Field(ge=0)
    weights: dict[str, float]
    phase: Str32
    train_steps: Int64 | None = None
    state: Json
    superseded: bool = False
    created_at: Time


class ArchivedFeedback(_Part):
    step: Int64 = Field(ge=0)
    version: Int32 | None = None
    body: Json
    superseded: bool = False
    created_at: Time


class ArchivedOnline(_Part):
    """An online run's mixer state (``version`` is its compare-and-swap counter) and history,
    versions by number, feedback as recorded."""

    version: Int32 = Field(ge=1)
    state: Json
    frozen: bool = False
    updated_at: Time
    versions: list[ArchivedVersion] = Field(min_length=1)
    feedback: list[ArchivedFeedback] = []


class ArchivedRun(_Part):
    id: str
    status: Literal["pending", "running", "completed", "failed"]
    weights: dict[str, float]
    params: Json = {}
    tags: dict[str, str] = {}
    metrics: dict[str, float] = {}
    excluded: bool = False
    reason: str | None = None
    worker: Str128 | None = None
    last_worker: Str128 | None = None
    lease_seconds: Int32 | None = None
    lease_expires_at: Time | None = None
    attempt: Int32 = Field(default=1, ge=1)
    external_id: Annotated[str, Field(max_length=256)] | None = None
    request_id: Str128 | None = None
    request_index: Int32 | None = None
    name: Str128 | None = None
    total_steps: Int64 | None = None
    created_at: Time
    updated_at: Time
    points: list[tuple[Str128, Int64, float]] = []
    """Metric points as ``[name, step, value]``, by step then name."""
    online: ArchivedOnline | None = None


class ArchivedFit(_Part):
    id: str
    model: Str64
    requested: Str64
    n_runs: Int32
    report: Json
    recommendation: Json | None = None
    model_format: Str64 | None = None
    model_data: bytes | None = None
    """The stored model as it is stored (base64 in JSON), in ``model_format``; never a pickle."""
    fitted_at: Time
    status: Literal["running", "completed", "failed"] = "completed"
    reason: str | None = None
    stage: Annotated[str, Field(max_length=200)] | None = None
    owner: Str64 | None = None
    """The server instance running the fit; in another store nobody is, so a running fit's
    heartbeat goes stale there and it is failed."""
    started_at: Time | None = None
    finished_at: Time | None = None
    heartbeat_at: Time | None = None


class ExperimentArchive(_Part):
    format: Literal["mixopt-experiment"]
    version: Literal[1]
    origin: str = Field(min_length=1, max_length=64)
    """Made at export; an import records it, so the same archive is imported once."""
    exported_at: Time
    mixopt_version: str
    experiment: ArchivedExperiment
    runs: list[ArchivedRun] = []
    fits: list[ArchivedFit] = []
    """Oldest first: the last one is the experiment's latest fit."""
