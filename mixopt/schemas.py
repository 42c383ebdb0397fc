"""Wire schemas of the HTTP API (version 1), shared by the service and the client.

Request bodies forbid unknown fields (the contract answers them with 422); response models allow
extra fields so that an older client keeps working against a newer server that adds some.
This module needs only pydantic: trainers import it through ``mixopt.client``.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

__all__ = [
    "API_PREFIX",
    "DEFAULT_URL",
    "MAX_RUN_BATCH",
    "NAME_PATTERN",
    "ClaimRequest",
    "CompleteRequest",
    "Direction",
    "Domain",
    "DomainSpec",
    "ExcludeRequest",
    "Experiment",
    "ExperimentCreate",
    "ExperimentStatus",
    "ExperimentUpdate",
    "FailRequest",
    "HeartbeatRequest",
    "ImportStatus",
    "MethodInfo",
    "MetricPoint",
    "MetricsAccepted",
    "MetricsBatch",
    "Objective",
    "Page",
    "Problem",
    "ProblemError",
    "ProposalRequest",
    "ReleaseRequest",
    "Run",
    "RunBatch",
    "RunBatchResult",
    "RunCounts",
    "RunImport",
    "RunList",
    "RunStatus",
    "Scope",
    "StoredPoint",
    "Token",
    "TokenCreate",
    "TokenCreated",
]

API_PREFIX = "/api/v1"
"""The path every API resource starts with (the probes, ``/metrics`` and the dashboard do not)."""
DEFAULT_URL = "http://127.0.0.1:8000"
"""The server a client talks to when given no URL: where ``mixopt serve`` listens by default."""
NAME_PATTERN = r"^[A-Za-z0-9_.:/-]{1,128}$"
MAX_STEP = 2**62

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
RequestId = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Metrics = dict[Name, FiniteFloat]
MAX_JSON_DEPTH = 64
"""Free-form JSON (``params``, ``config``) nests at most this deep."""


def _storable_text(value: str) -> str:
    """Postgres text and JSON cannot hold NUL characters; nothing can encode lone surrogates."""
    if "\x00" in value:
        raise ValueError("must not contain NUL (U+0000) characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


StorableText = AfterValidator(_storable_text)
Tags = dict[Name, Annotated[str, StringConstraints(max_length=1024), StorableText]]
Reason = Annotated[str, StringConstraints(max_length=4096), StorableText]
Scope = Literal["read", "write", "admin"]
Mode = Literal["offline", "online"]
ExperimentStatus = Literal["active", "archived"]
RunStatus = Literal["pending", "running", "completed", "failed"]
Direction = Literal["minimize", "maximize"]
ImportStatus = Literal["pending", "completed", "failed"]
"""The statuses a run can be imported with: a running run is imported as pending."""


class _Body(BaseModel):
    """A request body: unknown fields are a client error, not something to drop silently, and
    values are taken as they are typed (strict): a weight sent as the string ``"0.5"`` is a 422,
    not a number."""

    model_config = ConfigDict(extra="forbid", strict=True)


class _Reply(BaseModel):
    model_config = ConfigDict(extra="allow")


def check_json_storable(value: Any, path: str = "", depth: int = 0) -> None:
    """Reject what free-form JSON (``params``, ``config``) must not hold: NaN and infinities (JSON
    has no such numbers and Postgres refuses them), strings with NUL characters or lone
    surrogates (no database stores them), and nesting deeper than ``MAX_JSON_DEPTH``."""
    where = path or "top level"
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels at {where}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"non-finite number at {where}")
    if isinstance(value, str):
        try:
            _storable_text(value)
        except ValueError as exc:
            raise ValueError(f"string at {where} {exc}") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            where_key = f"{path}.{key}" if path else str(key)
            try:
                _storable_text(str(key))
            except ValueError as exc:
                raise ValueError(f"key {where_key!r} {exc}") from None
            check_json_storable(item, where_key, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_json_storable(item, f"{path}[{index}]", depth + 1)


# --- experiments -------------------------------------------------------------------------------


class DomainSpec(_Body):
    """A data domain as the user declares it."""

    name: Name
    prior: PositiveFloat | None = Field(
        default=None, description="relative share; defaults to the token share, else uniform"
    )
    tokens: PositiveFloat | None = Field(default=None, description="tokens available")
    min_weight: Fraction = 0.0
    max_weight: Fraction = 1.0

    @model_validator(mode="after")
    def _bounds_ordered(self) -> DomainSpec:
        if self.min_weight > self.max_weight:
            raise ValueError("min_weight must not exceed max_weight")
        return self


class Domain(_Reply):
    """A domain as stored: ``prior`` is normalised over the experiment's domains."""

    name: str
    prior: float
    tokens: float | None = None
    min_weight: float = 0.0
    max_weight: float = 1.0


class Objective(_Body):
    metrics: dict[Name, FiniteFloat] = Field(
        min_length=1, description="the objective is this weighted sum of the runs' metrics"
    )
    direction: Direction = "minimize"


class ExperimentCreate(_Body):
    name: Name
    mode: Mode = "offline"
    method: Name
    domains: list[DomainSpec] = Field(min_length=2, max_length=1024)
    objective: Objective | None = Field(
        default=None,
        description="required offline; online it defaults to {'eval_loss/mean': 1}",
    )
    config: dict[str, Any] = Field(default_factory=dict)

    @field_validator("domains")
    @classmethod
    def _unique_domain_names(cls, domains: list[DomainSpec]) -> list[DomainSpec]:
        seen: set[str] = set()
        for domain in domains:
            if domain.name in seen:
                raise ValueError(f"domain {domain.name!r} is declared twice")
            seen.add(domain.name)
        return domains

    @field_validator("config")
    @classmethod
    def _finite_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        check_json_storable(config)
        return config


class RunCounts(_Reply):
    pending: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0
    excluded: int = 0


class ExperimentUpdate(_Body):
    """``PATCH /experiments/{id}``: the fields given are changed, the others kept."""

    name: Name | None = None
    objective: Objective | None = Field(
        default=None,
        description="a new objective; fits made on the old one stay listed, but recommend "
        "and predict answer 409 until the next fit",
    )


class Experiment(_Reply):
    id: str
    name: str
    mode: Mode
    method: str
    domains: list[Domain]
    objective: Objective
    config: dict[str, Any]
    status: ExperimentStatus
    created_at: datetime
    counts: RunCounts = Field(default_factory=RunCounts)
    objective_changed_at: datetime | None = Field(
        default=None,
        description="when PATCH last changed the objective; fits started before it are stale",
    )


class MethodInfo(_Reply):
    name: str
    mode: Mode
    description: str
    config_schema: dict[str, Any]


class ModelInfo(_Reply):
    """A regressor ``POST /fit`` accepts as ``model``, with its settings (defaults)."""

    name: str
    description: str
    defaults: dict[str, Any] = Field(default_factory=dict)


class MethodList(_Reply):
    items: list[MethodInfo]
    models: list[ModelInfo] = Field(
        default_factory=list, description="the fit's models: auto and every regressor"
    )


# --- runs --------------------------------------------------------------------------------------


class Run(_Reply):
    id: str
    experiment_id: str
    status: RunStatus
    weights: dict[str, float]
    params: dict[str, Any] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    excluded: bool = False
    worker: str | None = None
    lease_expires_at: datetime | None = None
    attempt: int = 1
    metrics: dict[str, float] = Field(default_factory=dict)
    external_id: str | None = None
    created_at: datetime
    updated_at: datetime
    reason: str | None = Field(
        default=None, description="why the run last failed, or why it is excluded"
    )


class RunImport(_Body):
    """A run someone else chose or already trained (offline experiments)."""

    weights: dict[Name, NonNegativeFloat]
    params: dict[str, Any] = Field(default_factory=dict)
    tags: Tags = Field(default_factory=dict)
    metrics: Metrics = Field(default_factory=dict)
    status: ImportStatus | None = Field(
        default=None, description="defaults to completed when metrics are given, else pending"
    )
    external_id: (
        Annotated[str, StringConstraints(min_length=1, max_length=256), StorableText] | None
    ) = None

    @field_validator("params")
    @classmethod
    def _finite_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        check_json_storable(params)
        return params

    @property
    def resolved_status(self) -> ImportStatus:
        if self.status is not None:
            return self.status
        return "completed" if self.metrics else "pending"


MAX_RUN_BATCH = 1000
"""The most runs ``POST /experiments/{id}/runs/batch`` imports in one request."""


class RunBatch(_Body):
    """Runs to import at once (offline experiments), all or nothing."""

    runs: list[RunImport] = Field(min_length=1, max_length=MAX_RUN_BATCH)


class RunBatchResult(_Reply):
    items: list[Run] = Field(description="the runs, in the order of the request")
    new: int = Field(description="how many of them this call stored (the others were known)")


class ProposalRequest(_Body):
    count: int = Field(ge=1, le=1000)
    request_id: RequestId | None = None


class ClaimRequest(_Body):
    worker: Name
    lease_seconds: int = Field(default=600, ge=10, le=86400)


class HeartbeatRequest(_Body):
    worker: Name
    lease_seconds: int | None = Field(
        default=None, ge=10, le=86400, description="new lease length; default: the claim's"
    )


class MetricPoint(_Body):
    name: Name
    step: int = Field(ge=0, le=MAX_STEP)
    value: FiniteFloat


class MetricsBatch(_Body):
    points: list[MetricPoint] = Field(max_length=10_000)


class MetricsAccepted(_Reply):
    accepted: int
    new: int


class StoredPoint(_Reply):
    name: str
    step: int
    value: float


class CompleteRequest(_Body):
    metrics: Metrics = Field(default_factory=dict)
    worker: Name | None = None


class FailRequest(_Body):
    reason: Reason = ""
    worker: Name | None = None


class ReleaseRequest(_Body):
    worker: Name


class ExcludeRequest(_Body):
    excluded: bool = True
    reason: Reason | None = None


T = TypeVar("T")


class Page(_Reply, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


class RunList(_Reply):
    items: list[Run]


# --- tokens ------------------------------------------------------------------------------------


class TokenCreate(_Body):
    name: Name
    scope: Scope = "write"
    expires_in_days: int | None = Field(default=None, ge=1, le=36500)


class Token(_Reply):
    id: str
    name: str
    scope: Scope
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None


class TokenCreated(Token):
    token: str = Field(description="the secret, shown only in this answer")


# --- errors ------------------------------------------------------------------------------------


class ProblemError(_Reply):
    loc: list[str | int]
    msg: str


class Problem(_Reply):
    """An RFC 9457 problem document."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[ProblemError] | None = None


# --- fits (offline) ----------------------------------------------------------------------------

FitModel = Literal["auto", "lightgbm", "linear", "loglinear", "mixing_law", "gp"]


class FitRequest(_Body):
    model: Name = Field(default="auto", description="auto, or a regressor name")
    wait: bool = Field(
        default=True,
        description="answer once the fit is done (200); false: answer 202 with the running "
        "fit at once and poll GET /fits/{id}",
    )


class CvScores(_Reply):
    folds: int
    spearman: float | None = None
    pearson: float | None = None
    mae: float | None = None
    r2: float | None = None


class Candidate(_Reply):
    model: str
    spearman: float | None = None


class MetricFit(_Reply):
    """One metric of a per-metric fit: its weight in the objective, its regressor and that
    regressor's cross-validated scores on the metric alone."""

    metric: str
    weight: float
    model: str
    spearman: float | None = None
    mae: float | None = None


class Noise(_Reply):
    replicate_groups: int = 0
    std: float | None = None


class OutOfFold(_Reply):
    run_id: str
    actual: float
    predicted: float


FitStatus = Literal["running", "completed", "failed"]


class FitProgress(_Reply):
    elapsed_seconds: float = Field(description="since the fit started (to its end once done)")
    stage: str | None = Field(default=None, description="what a running fit is doing")


class FitReport(_Reply):
    """A fit. Until ``status`` is ``completed`` its report fields are empty (``n_runs`` 0,
    ``cv.folds`` 0)."""

    id: str
    experiment_id: str | None = None
    model: str
    requested: str
    n_runs: int
    fitted_at: datetime
    cv: CvScores
    candidates: list[Candidate] = Field(default_factory=list)
    importance: dict[str, float] = Field(default_factory=dict)
    noise: Noise = Field(default_factory=Noise)
    oof: list[OutOfFold] = Field(default_factory=list)
    per_metric: list[MetricFit] = Field(
        default_factory=list,
        description="when the objective's metrics were fitted one by one (model per_metric(...)):"
        " each metric's regressor; empty for a fit of the objective as one number",
    )
    tied: list[str] = Field(
        default_factory=list,
        description="for auto: the candidates whose cross-validated Spearman is within one"
        " standard error (paired bootstrap) of the best one's, the chosen model (the first of"
        " them in the order mixing_law, loglinear, gp, lightgbm, linear) included; empty when"
        " the best stood alone",
    )
    status: FitStatus = "completed"
    reason: str | None = Field(default=None, description="why a failed fit failed")
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: FitProgress | None = None


class BacktestRequest(_Body):
    models: list[Name] | None = Field(
        default=None,
        min_length=1,
        max_length=16,
        description="regressors to compare, and/or auto (default: every regressor and auto)",
    )
    sizes: list[Annotated[int, Field(ge=1)]] | None = Field(
        default=None,
        min_length=1,
        max_length=16,
        description="numbers of runs to replay (default: 32, 64, 128, ... and all usable runs)",
    )
    designs: list[Name] = Field(
        default_factory=lambda: ["stored"],
        min_length=1,
        max_length=8,
        description="stored (creation order), random, or an offline method replayed against "
        "the stored runs (each proposal answered by the nearest unused run)",
    )
    reference_model: Name = Field(
        default="lightgbm", description="the regressor fitted on every run to judge the others"
    )


class BacktestRow(_Reply):
    design: str
    n_runs: int
    model: str
    requested: str
    cv_spearman: float | None = None
    heldout_spearman: float | None = None
    predicted: float
    judged: float
    regret: float
    weights: dict[str, float]
    match_l1: float | None = None
    seconds: float


class BacktestReference(_Reply):
    model: str
    cv_spearman: float | None = None
    weights: dict[str, float]
    judged: float


class BacktestReport(_Reply):
    experiment_id: str | None = None
    n_runs: int
    sizes: list[int]
    designs: list[str]
    models: list[str]
    direction: Direction
    reference: BacktestReference
    rows: list[BacktestRow]
    seconds: float


class Predicted(_Reply):
    value: float
    low: float
    high: float


class MixtureIn(_Body):
    weights: dict[Name, NonNegativeFloat]
    params: dict[str, Any] = Field(default_factory=dict)


class PredictRequest(_Body):
    mixtures: list[MixtureIn] = Field(min_length=1, max_length=10_000)


class PredictionList(_Reply):
    items: list[Predicted]


class Baseline(_Reply):
    weights: dict[str, float]
    params: dict[str, Any] = Field(default_factory=dict)
    predicted: Predicted | None = None


class Alternative(_Reply):
    weights: dict[str, float]
    params: dict[str, Any] = Field(default_factory=dict)
    predicted: Predicted


class BestRun(_Reply):
    """The best observed run among the fitted ones, which competed with the searched mixture."""

    run_id: str
    weights: dict[str, float]
    observed: float = Field(description="the objective the run reported")
    predicted: Predicted = Field(description="the fitted model's value for its mixture")


class Recommendation(_Reply):
    weights: dict[str, float]
    params: dict[str, Any] = Field(default_factory=dict)
    predicted: Predicted | None = None
    baseline: Baseline | None = None
    p_better_than_baseline: float | None = None
    alternatives: list[Alternative] = Field(default_factory=list)
    fit_id: str | None = None
    model: str | None = None
    n_runs: int | None = None
    search: dict[str, Any] = Field(default_factory=dict)
    run_id: str | None = Field(default=None, description="online: the run the weights come from")
    chosen: Literal["search", "best_run"] | None = Field(
        default=None,
        description=(
            "offline: whether `weights` is the searched mixture or the best observed run's, "
            "which competed with it (`best_run`; `reason` says why it won)"
        ),
    )
    best_run: BestRun | None = None
    reason: str | None = None


# --- online ------------------------------------------------------------------------------------


class OnlineRunCreate(_Body):
    """Start a training run of an online experiment."""

    name: Name
    total_steps: int | None = Field(default=None, ge=1, le=MAX_STEP)
    tags: Tags = Field(default_factory=dict)
    request_id: RequestId | None = None


class Weights(_Reply):
    run_id: str
    weights: dict[str, float]
    version: int
    step: int
    train_steps: int | None = None
    phase: str = "exploit"


class WeightsVersion(Weights):
    created_at: datetime | None = None
    superseded: bool = False


class Feedback(_Body):
    step: int = Field(ge=0, le=MAX_STEP, description="global step at which the segment ended")
    version: int | None = Field(default=None, ge=1, description="weights version trained on")
    train_losses: dict[Name, FiniteFloat] = Field(default_factory=dict)
    eval_losses: dict[Name, FiniteFloat] = Field(default_factory=dict)
    tokens: dict[Name, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)


class ResumeRequest(_Body):
    step: int = Field(ge=0, le=MAX_STEP)
