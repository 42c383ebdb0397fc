"""The Store interface: everything the service persists, behind one small API.

Routes and application code talk to a ``Store``; SQL, locking, idempotency and transactions live in
its implementation (``SqlStore``). Records are frozen: nobody mutates what the store returned.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from mixopt.schemas import RunStatus
from service.store.archive import ArchivedFit, ExperimentArchive

__all__ = [
    "ExperimentRecord",
    "FeedbackContext",
    "FeedbackRecord",
    "FitRecord",
    "NewExperiment",
    "NewFit",
    "NewOnlineRun",
    "NewRun",
    "NewVersion",
    "OnlineState",
    "Page",
    "PointRecord",
    "RunRecord",
    "SeriesPoint",
    "StaleVersion",
    "Store",
    "StoredModel",
    "TokenRecord",
    "WeightsRecord",
    "every_page",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True)
class NewExperiment:
    name: str
    mode: str
    method: str
    domains: list[dict[str, Any]]
    objective: dict[str, Any]
    config: dict[str, Any]


@dataclass(frozen=True)
class ExperimentRecord:
    id: str
    name: str
    mode: str
    method: str
    domains: list[dict[str, Any]]
    objective: dict[str, Any]
    config: dict[str, Any]
    status: str
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None
    counts: dict[str, int]
    objective_changed_at: datetime | None = None
    """When the objective was last edited (None: never): fits started before it are stale."""

    @property
    def max_attempts(self) -> int:
        return int(self.config.get("max_attempts", 3))


@dataclass(frozen=True)
class NewRun:
    weights: Mapping[str, float]
    params: Mapping[str, Any] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    status: RunStatus = "pending"
    external_id: str | None = None


@dataclass(frozen=True)
class NewOnlineRun:
    name: str
    total_steps: int | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    request_id: str | None = None


@dataclass(frozen=True)
class NewVersion:
    """What an online mixer decided, stored as one version: the state after the decision and
    the weights it serves (with the phase and the steps until the next feedback)."""

    state: Mapping[str, Any]
    weights: Mapping[str, float]
    phase: str
    train_steps: int | None


@dataclass(frozen=True)
class RunRecord:
    id: str
    experiment_id: str
    status: RunStatus
    weights: dict[str, float]
    params: dict[str, Any]
    tags: dict[str, str]
    metrics: dict[str, float]
    excluded: bool
    reason: str | None
    worker: str | None
    lease_expires_at: datetime | None
    attempt: int
    external_id: str | None
    created_at: datetime
    updated_at: datetime
    name: str | None = None
    """An online training run's name (None offline)."""


@dataclass(frozen=True)
class PointRecord:
    name: str
    step: int
    value: float


@dataclass(frozen=True)
class SeriesPoint:
    """One point of a metric's curve as ``metric_series`` draws it: a stored point (then
    ``low == high == value``) or a bucket of them: its last step, the mean of its values and
    their min and max."""

    step: int
    value: float
    low: float
    high: float


@dataclass(frozen=True)
class TokenRecord:
    id: str
    name: str
    scope: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def usable(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True)
class WeightsRecord:
    """One version of an online run's weights."""

    run_id: str
    version: int
    step: int
    weights: dict[str, float]
    phase: str
    train_steps: int | None
    created_at: datetime
    superseded: bool = False


@dataclass(frozen=True)
class OnlineState:
    """An online run's mixer state as of ``version`` (compare-and-swap on it)."""

    run_id: str
    experiment_id: str
    version: int
    state: dict[str, Any]
    frozen: bool


@dataclass(frozen=True)
class FeedbackContext:
    """What folding one feedback needs, read at once: the state, its experiment, the body
    already recorded at that step (``None`` if none) and the step the run has reached (its
    latest live feedback, or the step its current weights apply from, whichever is later)."""

    state: OnlineState
    experiment: ExperimentRecord
    recorded: dict[str, Any] | None
    current_step: int = 0


@dataclass(frozen=True)
class FeedbackRecord:
    """One feedback recorded for an online run; ``superseded`` once a resume went back past
    its step."""

    step: int
    version: int | None
    body: dict[str, Any]
    superseded: bool
    created_at: datetime


@dataclass(frozen=True)
class FitRecord:
    id: str
    experiment_id: str
    model: str
    requested: str
    n_runs: int
    report: dict[str, Any]
    recommendation: dict[str, Any] | None
    fitted_at: datetime
    status: str = "completed"
    """running, completed or failed (with a ``reason``)."""
    reason: str | None = None
    stage: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True)
class NewFit:
    """A fit to store; ``model_data`` is the fitted model encoded as ``model_format`` says (the
    store keeps the bytes and never decodes them)."""

    model: str
    requested: str
    n_runs: int
    report: Mapping[str, Any]
    recommendation: Mapping[str, Any] | None
    model_data: bytes | None
    model_format: str | None


@dataclass(frozen=True)
class StoredModel:
    """A fit's stored model. ``format`` is None for a model written by a replica older than
    the format column (those wrote pickles)."""

    format: str | None
    data: bytes


def every_page(fetch: Callable[[str | None], Page[T]]) -> Iterator[T]:
    """Every item of a paged listing: ``fetch(cursor)`` from ``None`` until no next cursor."""
    cursor: str | None = None
    while True:
        page = fetch(cursor)
        yield from page.items
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


class StaleVersion(Exception):
    """The state moved on since it was read: re-read and apply again (not a user error)."""


class Store(ABC):
    """Persistence of experiments, runs, metric points and API tokens.

    Every write is committed before the method returns (durable when answered). Ids are the
    API's strings; an id that names nothing raises ``NotFound``.
    """

    # --- lifecycle ---
    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def check_ready(self) -> None:
        """Raise ``RuntimeError`` unless the database answers and its schema is at head."""

    # --- experiments ---
    @abstractmethod
    def create_experiment(self, new: NewExperiment) -> ExperimentRecord:
        """``Conflict`` if an active experiment already has the name."""

    @abstractmethod
    def get_experiment(self, experiment_id: str, *, counts: bool = True) -> ExperimentRecord:
        """With ``counts=False`` the run counts are left at zero (one query fewer, which matters
        on hot paths of experiments with many runs)."""

    @abstractmethod
    def list_experiments(
        self, *, status: str | None, limit: int, cursor: str | None
    ) -> Page[ExperimentRecord]:
        """Newest first."""

    @abstractmethod
    def archive_experiment(self, experiment_id: str) -> ExperimentRecord:
        """Idempotent."""

    @abstractmethod
    def update_experiment(
        self,
        experiment_id: str,
        *,
        name: str | None = None,
        objective: Mapping[str, Any] | None = None,
    ) -> ExperimentRecord:
        """Rename and/or change the objective (None: kept). A changed objective stamps
        ``objective_changed_at``; the same objective again changes nothing. ``Conflict`` for
        a name another active experiment has."""

    @abstractmethod
    def last_activity(self, experiment_ids: Sequence[str]) -> dict[str, datetime]:
        """Per experiment, the latest ``updated_at`` of its runs (its own ``updated_at`` while it
        has none), read at once for all ids. Ids that name no experiment are left out."""

    # --- runs ---
    @abstractmethod
    def add_runs(
        self, experiment_id: str, runs: Sequence[NewRun], request_id: str | None = None
    ) -> list[RunRecord]:
        """Insert runs atomically. With a ``request_id`` already used in this experiment, insert
        nothing and return the runs that request created. ``Gone`` if archived."""

    @abstractmethod
    def runs_for_request(self, experiment_id: str, request_id: str) -> list[RunRecord] | None:
        """The runs a ``request_id`` created, or None if it was never used."""

    @abstractmethod
    def import_run(self, experiment_id: str, run: NewRun) -> tuple[RunRecord, bool]:
        """Insert one run; idempotent on ``external_id``: a known one returns (stored, False), or
        ``Conflict`` if its weights or metrics differ."""

    @abstractmethod
    def import_runs(
        self, experiment_id: str, runs: Sequence[NewRun]
    ) -> list[tuple[RunRecord, bool]]:
        """Insert runs in one transaction, all or nothing, each idempotent on ``external_id``
        as ``import_run``: a known one (or one repeated within ``runs``) answers (stored,
        False); ``Conflict``, and nothing stored, if its weights or metrics differ. The answer
        is in the order of ``runs``. ``Gone`` if archived."""

    @abstractmethod
    def get_run(self, run_id: str) -> RunRecord: ...

    @abstractmethod
    def list_runs(
        self,
        experiment_id: str,
        *,
        status: str | None = None,
        excluded: bool | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[RunRecord]:
        """Oldest first."""

    def iter_runs(self, experiment_id: str, *, page_size: int = 1000) -> Iterator[RunRecord]:
        """Every run of the experiment, oldest first, read page by page."""
        return every_page(
            lambda cursor: self.list_runs(experiment_id, limit=page_size, cursor=cursor)
        )

    @abstractmethod
    def claim(self, experiment_id: str, worker: str, lease_seconds: int) -> RunRecord | None:
        """Lease the oldest pending run; None when there is none. Expired leases are returned
        to pending first. Two claims never get the same run."""

    @abstractmethod
    def heartbeat(self, run_id: str, worker: str, lease_seconds: int | None = None) -> RunRecord:
        """Extend the lease; ``LeaseLost`` unless ``worker`` holds it."""

    @abstractmethod
    def complete(self, run_id: str, metrics: Mapping[str, float], worker: str | None) -> RunRecord:
        """Final metrics. Repeating the same call is harmless; different metrics: ``Conflict``."""

    @abstractmethod
    def fail(self, run_id: str, reason: str, worker: str | None) -> RunRecord:
        """This attempt failed: pending again with attempt + 1, or failed after max_attempts."""

    @abstractmethod
    def retry(self, run_id: str) -> RunRecord:
        """A failed offline run back to pending with a fresh attempt budget (its reason
        cleared); ``Conflict`` for any other status or an online run."""

    @abstractmethod
    def release(self, run_id: str, worker: str) -> RunRecord:
        """Give the lease back: pending again, attempt unchanged."""

    @abstractmethod
    def exclude(self, run_id: str, excluded: bool, reason: str | None) -> RunRecord: ...

    @abstractmethod
    def expire_leases(self) -> int:
        """Return every run whose lease has expired to pending (attempt + 1) or failed."""

    # --- metric points ---
    @abstractmethod
    def append_metrics(
        self, run_id: str, points: Sequence[tuple[str, int, float]]
    ) -> tuple[int, int]:
        """Append points unique on (name, step); return (accepted, new). A point already stored
        with another value rejects the whole batch (``Conflict``)."""

    @abstractmethod
    def list_metrics(
        self, run_id: str, *, name: str | None, limit: int, cursor: str | None
    ) -> Page[PointRecord]:
        """Ordered by step (then name)."""

    @abstractmethod
    def metric_series(
        self, run_id: str, *, max_points: int = 500, names: Sequence[str] | None = None
    ) -> dict[str, list[SeriesPoint]]:
        """Each metric name of the run (or of ``names`` only; names without points are left
        out) to its curve ordered by step, downsampled by the database: a name with more than
        ``max_points`` points gets one point per non-empty bucket, where its step range
        ``[lo, hi]`` is cut into ``max_points`` buckets of equal width (step ``s`` falls in
        bucket ``(s - lo) * max_points // (hi - lo + 1)``). Other names come back exactly.
        ``InvalidInput`` if ``max_points`` < 1."""

    # --- tokens ---
    @abstractmethod
    def create_token(
        self, name: str, scope: str, expires_at: datetime | None
    ) -> tuple[TokenRecord, str]:
        """Store a new token's hash; return it with the secret (never stored)."""

    @abstractmethod
    def find_token(self, secret: str) -> TokenRecord | None:
        """The token with this secret, whether usable or not; None if unknown."""

    @abstractmethod
    def list_tokens(self, *, limit: int, cursor: str | None) -> Page[TokenRecord]: ...

    @abstractmethod
    def revoke_token(self, token_id: str) -> TokenRecord:
        """Idempotent."""

    # --- online runs ---
    @abstractmethod
    def start_online_run(
        self, experiment_id: str, run: NewOnlineRun, first: NewVersion
    ) -> tuple[RunRecord, bool]:
        """Create a running training run with ``first`` as version 1 (from step 0) of its state
        and weights; idempotent on ``run.request_id`` (returns the first run and False)."""

    @abstractmethod
    def online_state(self, run_id: str) -> OnlineState:
        """``NotFound`` for unknown runs and for runs that are not online."""

    @abstractmethod
    def get_weights(self, run_id: str, at_step: int | None = None) -> WeightsRecord:
        """The current weights, or those in effect at ``at_step``."""

    def cached_weights(self, run_id: str) -> WeightsRecord | None:
        """The current weights from memory without blocking, or ``None`` (then ask
        ``get_weights``). Only ever a version that was current a moment ago."""
        return None

    @abstractmethod
    def weights_history(
        self, run_id: str, *, limit: int, cursor: str | None
    ) -> Page[WeightsRecord]:
        """Every version, oldest first, superseded ones included."""

    @abstractmethod
    def feedback_history(
        self, run_id: str, *, limit: int, cursor: str | None
    ) -> Page[FeedbackRecord]:
        """Every feedback recorded, oldest first (by step, then as recorded), superseded ones
        included; ``NotFound`` for unknown runs and runs that are not online."""

    @abstractmethod
    def feedback_context(self, run_id: str, step: int) -> FeedbackContext:
        """One read for a feedback: ``NotFound`` for unknown runs and runs that are not online."""

    @abstractmethod
    def last_feedback(self, run_id: str) -> dict[str, Any] | None:
        """The body of the run's latest live feedback (highest step), if any."""

    @abstractmethod
    def apply_feedback(
        self,
        run_id: str,
        *,
        expected_version: int,
        step: int,
        body: Mapping[str, Any],
        version: NewVersion,
    ) -> WeightsRecord:
        """Record the feedback and move the state from ``expected_version`` to ``version``
        (serving from ``step``), in one transaction. ``StaleVersion`` if the state moved or a
        feedback for ``step`` is already recorded (re-read: the context then shows it);
        ``Conflict`` if the run is frozen."""

    @abstractmethod
    def resume(self, run_id: str, step: int) -> WeightsRecord:
        """Return the state to the version in effect at ``step`` as a new version; feedback and
        versions after ``step`` are marked superseded. ``Conflict`` (naming the current step)
        for a step the run has not reached."""

    # --- fits ---
    @abstractmethod
    def add_fit(self, experiment_id: str, fit: NewFit) -> FitRecord: ...

    @abstractmethod
    def get_fit(self, fit_id: str) -> FitRecord: ...

    @abstractmethod
    def list_fits(self, experiment_id: str, *, limit: int, cursor: str | None) -> Page[FitRecord]:
        """Newest first."""

    @abstractmethod
    def latest_fit(self, experiment_id: str) -> tuple[FitRecord, StoredModel | None] | None:
        """The newest completed fit with its stored model (None if it has none), or None
        before any completed fit."""

    @abstractmethod
    def start_fit(self, experiment_id: str, requested: str, owner: str) -> FitRecord:
        """Store a running fit of ``requested`` run by the server instance ``owner``."""

    @abstractmethod
    def complete_fit(self, fit_id: str, fit: NewFit) -> FitRecord:
        """Store a running fit's result; a fit that is no longer running (failed meanwhile)
        is returned as it is."""

    @abstractmethod
    def fail_fit(self, fit_id: str, reason: str) -> FitRecord:
        """Mark a running fit failed (a fit that is no longer running is left as it is)."""

    @abstractmethod
    def beat_fits(self, owner: str, stages: Mapping[str, str | None]) -> None:
        """``owner`` is alive and running the fits ``stages`` names (id: what each does)."""

    @abstractmethod
    def fail_abandoned_fits(
        self, reason: str, *, stale_seconds: float, owner: str | None = None
    ) -> list[str]:
        """Fail the running fits whose heartbeat is older than ``stale_seconds`` (and, with
        ``owner``, every running fit of that owner); their ids."""

    # --- moving experiments between stores ---
    @abstractmethod
    def export_experiment(self, experiment_id: str, origin: str) -> ExperimentArchive:
        """The whole experiment as an archive named ``origin``, read in one snapshot."""

    @abstractmethod
    def imported_experiment(self, origin: str) -> tuple[ExperimentRecord, str | None] | None:
        """The experiment imported from the archive ``origin``, with the content digest recorded
        then; None if none was."""

    @abstractmethod
    def import_experiment(
        self,
        archive: ExperimentArchive,
        *,
        digest: str,
        name: str | None = None,
        relink: Callable[[ArchivedFit, Mapping[str, str]], ArchivedFit] | None = None,
    ) -> tuple[ExperimentRecord, bool]:
        """Write ``archive`` as a new experiment in one transaction (new ids; ``relink``
        rewrites the run ids inside each fit). Idempotent on ``archive.origin``: a repeat
        returns the experiment and False, or ``Conflict`` if its ``digest`` differs."""
