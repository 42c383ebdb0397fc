"""``MixoptClient``: one method per call of the contract, with the retry rules of the package."""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast
from urllib.parse import quote

import httpx
import pydantic

from mixopt import __version__, schemas
from mixopt.client.errors import PayloadTooLargeError, ValidationError, error_from_response
from mixopt.schemas import API_PREFIX, DEFAULT_URL, ExperimentStatus, ImportStatus, RunStatus

__all__ = ["METRICS_BATCH", "ImportedExperiment", "ImportedRun", "MixoptClient"]

METRICS_BATCH = 10_000
"""The most points ``POST /runs/{id}/metrics`` takes in one request."""

log = logging.getLogger("mixopt.client")

M = TypeVar("M", bound=pydantic.BaseModel)


def _local_validation_error(
    exc: pydantic.ValidationError, prefix: Sequence[str | int]
) -> ValidationError:
    errors = [schemas.ProblemError(loc=[*prefix, *e["loc"]], msg=e["msg"]) for e in exc.errors()]
    first = errors[0] if errors else None
    detail = f"{'.'.join(str(p) for p in first.loc)}: {first.msg}" if first else "invalid request"
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more)"
    problem = schemas.Problem(
        title="Validation failed (before sending)", status=422, detail=detail, errors=errors
    )
    return ValidationError(422, problem, local=True)


def _build(
    schema: type[M],
    value: M | Mapping[str, Any] | None = None,
    /,
    *,
    loc: Sequence[str | int] = ("body",),
    **fields: Any,
) -> M:
    """``value`` if it already is a ``schema``; else validate ``value`` and the fields that are
    not None into one, raising ``ValidationError`` (local, errors under ``loc``) if invalid."""
    if isinstance(value, schema):
        return value
    data: dict[str, Any] = dict(cast(Mapping[str, Any], value or {}))
    data.update((k, v) for k, v in fields.items() if v is not None)
    try:
        return schema.model_validate(data)
    except pydantic.ValidationError as exc:
        raise _local_validation_error(exc, loc) from None


def _rows_shifted(exc: ValidationError, offset: int) -> ValidationError:
    """The server's error about a batch with each ``["body", "runs", i, ...]`` moved to
    ``i + offset``: the index in what the caller passed, not in the batch."""
    if offset == 0:
        return exc
    errors = [
        e.model_copy(update={"loc": [*e.loc[:2], e.loc[2] + offset, *e.loc[3:]]})
        if e.loc[:2] == ["body", "runs"] and len(e.loc) > 2 and isinstance(e.loc[2], int)
        else e
        for e in exc.errors
    ]
    problem = exc.problem.model_copy(update={"errors": errors})
    return ValidationError(exc.status, problem, exc.response)


def _q(identifier: str) -> str:
    """An id as one path segment (ids come from the server, but never let one change the path)."""
    return quote(str(identifier), safe="")


# --- results -----------------------------------------------------------------------------------


class ImportedRun(schemas.Run):
    """An imported run, and whether this call created it (False: its external_id was known)."""

    created: bool = True


class ImportedExperiment(schemas.Experiment):
    """An experiment written from an archive, and whether this call created it (False: the
    same archive was imported before)."""

    created: bool = True


# --- retries -----------------------------------------------------------------------------------

_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
"""Failures before the request left: any call may be repeated."""
_MAYBE_SENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
"""Failures after the request may have reached the server: only idempotent calls are repeated."""


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare enough to ignore, the backoff applies


class MixoptClient:
    """A client of one mixopt server.

    ``base_url`` defaults to ``$MIXOPT_URL`` (else ``http://127.0.0.1:8000``) and ``token`` to
    ``$MIXOPT_TOKEN``. ``retries`` is the number of repeats after the first attempt; the delay
    before repeat ``n`` (from 0) is uniform in ``[0, min(backoff_max, backoff_base * 2**n)]``,
    at least the server's ``Retry-After`` (itself capped at ``backoff_max``). ``transport`` is an
    ``httpx`` transport (tests pass ``httpx.MockTransport``).
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30,
        retries: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        url = (base_url or os.environ.get("MIXOPT_URL") or DEFAULT_URL).rstrip("/")
        if url.endswith(API_PREFIX):
            url = url[: -len(API_PREFIX)]
        self.base_url = url
        token = token if token is not None else os.environ.get("MIXOPT_TOKEN") or None
        self.token = token
        all_headers = {"User-Agent": f"mixopt-client/{__version__}", **(headers or {})}
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        self.retries = retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._sleep: Callable[[float], None] = time.sleep
        self._weights_cache: dict[str, tuple[str, schemas.Weights]] = {}
        self._http = httpx.Client(
            base_url=url, headers=all_headers, timeout=timeout, transport=transport
        )

    # --- lifecycle ---

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> MixoptClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MixoptClient({self.base_url!r})"

    # --- transport ---

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        delay = random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max))
        return delay

    def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool = True,
        retry_unavailable: bool = True,
        timeout: float | None = None,
    ) -> httpx.Response:
        """One call, repeated on 503 and transient connection failures (see the module doc).
        Returns a response with a status below 400; raises ``MixoptAPIError`` otherwise."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    method,
                    path,
                    json=json,
                    content=content,
                    params=query or None,
                    headers=headers,
                    timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
                )
            except _MAYBE_SENT as exc:
                retryable = idempotent or isinstance(exc, _NEVER_SENT)
                if not retryable or attempt >= self.retries:
                    raise
                delay = self._delay(attempt, None)
                log.warning(
                    "%s %s failed (%s: %s); retry %d/%d in %.2fs",
                    method, path, type(exc).__name__, exc, attempt + 1, self.retries, delay,
                )  # fmt: skip
            else:
                if response.status_code != 503 or not retry_unavailable or attempt >= self.retries:
                    if response.status_code >= 400:
                        raise error_from_response(response)
                    return response
                delay = self._delay(attempt, _retry_after(response))
                log.warning(
                    "%s %s: 503; retry %d/%d in %.2fs",
                    method, path, attempt + 1, self.retries, delay,
                )  # fmt: skip
                response.close()
            attempt += 1
            self._sleep(delay)

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._send(method, path, **kwargs).json()

    def _model(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        return model.model_validate(self._json(method, path, **kwargs))

    @staticmethod
    def _body(model: pydantic.BaseModel) -> Any:
        return model.model_dump(mode="json", exclude_none=True)

    def _page(self, item: type[M], path: str, params: Mapping[str, Any]) -> schemas.Page[M]:
        return schemas.Page[item].model_validate(  # type: ignore[valid-type]
            self._json("GET", path, params=params)
        )

    def _iterate(self, page: Callable[[str | None], schemas.Page[M]]) -> Iterator[M]:
        cursor: str | None = None
        while True:
            current = page(cursor)
            yield from current.items
            if not current.next_cursor:
                return
            cursor = current.next_cursor

    @staticmethod
    def _limit(limit: int) -> int:
        if not 1 <= limit <= 1000:
            raise ValueError("limit must be within 1..1000")
        return limit

    # --- operations ---

    def healthz(self) -> dict[str, Any]:
        """``GET /healthz``: the process is up."""
        result: dict[str, Any] = self._json("GET", "/healthz")
        return result

    def readyz(self, *, wait: bool = False) -> dict[str, Any]:
        """``GET /readyz``: the database answers and is migrated. Not ready raises
        ``ServiceUnavailableError`` at once, or after the retries with ``wait=True``."""
        result: dict[str, Any] = self._json("GET", "/readyz", retry_unavailable=wait)
        return result

    # --- methods and experiments ---

    def list_methods(self) -> list[schemas.MethodInfo]:
        """``GET /methods``: every mixing method with its config schema."""
        data = self._json("GET", f"{API_PREFIX}/methods")
        return [schemas.MethodInfo.model_validate(item) for item in data["items"]]

    def create_experiment(
        self, spec: schemas.ExperimentCreate | Mapping[str, Any]
    ) -> schemas.Experiment:
        """``POST /experiments`` (admin). Not repeated after an ambiguous failure: the first
        attempt may have created it, and a repeat would answer 409 (names are unique among
        active experiments)."""
        body = _build(schemas.ExperimentCreate, spec)
        return self._model(
            schemas.Experiment,
            "POST",
            f"{API_PREFIX}/experiments",
            json=self._body(body),
            idempotent=False,
        )

    def list_experiments(
        self,
        status: ExperimentStatus | None = None,
        *,
        limit: int = 100,
        cursor: str | None = None,
    ) -> schemas.Page[schemas.Experiment]:
        """One page of ``GET /experiments``."""
        return self._page(
            schemas.Experiment,
            f"{API_PREFIX}/experiments",
            {"status": status, "limit": self._limit(limit), "cursor": cursor},
        )

    def iter_experiments(
        self, status: ExperimentStatus | None = None, *, page_size: int = 1000
    ) -> Iterator[schemas.Experiment]:
        """Every experiment, page after page."""
        return self._iterate(
            lambda cursor: self.list_experiments(status, limit=page_size, cursor=cursor)
        )

    def get_experiment(self, experiment_id: str) -> schemas.Experiment:
        return self._model(
            schemas.Experiment, "GET", f"{API_PREFIX}/experiments/{_q(experiment_id)}"
        )

    def update_experiment(
        self,
        experiment_id: str,
        *,
        name: str | None = None,
        objective: schemas.Objective | Mapping[str, Any] | None = None,
    ) -> schemas.Experiment:
        """``PATCH /experiments/{id}`` (admin): a new name and/or objective (None: kept). Fits
        made on the old objective no longer recommend or predict until the next fit."""
        spec: dict[str, Any] = {"name": name}
        if objective is not None:
            spec["objective"] = (
                objective.model_dump() if isinstance(objective, schemas.Objective) else objective
            )
        body = _build(schemas.ExperimentUpdate, spec)
        return self._model(
            schemas.Experiment,
            "PATCH",
            f"{API_PREFIX}/experiments/{_q(experiment_id)}",
            json=body.model_dump(exclude_none=True),
        )

    def archive_experiment(self, experiment_id: str) -> schemas.Experiment:
        """``POST /experiments/{id}/archive`` (admin); archived experiments refuse new runs."""
        return self._model(
            schemas.Experiment, "POST", f"{API_PREFIX}/experiments/{_q(experiment_id)}/archive"
        )

    # --- offline runs ---

    def propose(
        self, experiment_id: str, count: int, *, request_id: str | None = None
    ) -> list[schemas.Run]:
        """``POST /experiments/{id}/proposals``: ``count`` new pending runs designed by the
        method. ``request_id`` (default: a fresh uuid4, reused by retries) makes it idempotent."""
        body = _build(
            schemas.ProposalRequest, count=count, request_id=request_id or uuid.uuid4().hex
        )
        data = self._json(
            "POST", f"{API_PREFIX}/experiments/{_q(experiment_id)}/proposals", json=self._body(body)
        )
        return schemas.RunList.model_validate(data).items

    def import_run(
        self,
        experiment_id: str,
        weights: Mapping[str, float] | None = None,
        *,
        metrics: Mapping[str, float] | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        status: ImportStatus | None = None,
        external_id: str | None = None,
        run: schemas.RunImport | None = None,
    ) -> ImportedRun:
        """``POST /experiments/{id}/runs``: a run chosen or trained elsewhere (``run``, or the
        fields). The same ``external_id`` again returns the stored run with ``created=False``
        (409 if its weights or metrics differ)."""
        body = run or _build(
            schemas.RunImport,
            weights=weights,
            metrics=metrics,
            params=params,
            tags=tags,
            status=status,
            external_id=external_id,
        )
        response = self._send(
            "POST",
            f"{API_PREFIX}/experiments/{_q(experiment_id)}/runs",
            json=self._body(body),
            idempotent=body.external_id is not None,
        )
        return ImportedRun.model_validate(
            {**response.json(), "created": response.status_code == 201}
        )

    def import_runs(
        self,
        experiment_id: str,
        runs: Iterable[schemas.RunImport | Mapping[str, Any]],
        *,
        batch_size: int = schemas.MAX_RUN_BATCH,
    ) -> schemas.RunBatchResult:
        """``POST /experiments/{id}/runs/batch``: runs chosen or trained elsewhere, in batches of
        ``batch_size`` (at most 1,000; a batch over the server's size limit is split). Each
        batch is all or nothing and each run idempotent on its ``external_id``, as
        ``import_run``: ``items`` answers every run in order, ``new`` counts those stored now.

        Every run is validated before anything is sent. A refused batch (``ValidationError``,
        errors at ``["body", "runs", i, ...]`` with ``i`` the index in ``runs``, or
        ``ConflictError``) is raised after the earlier batches were stored; with external_ids,
        calling again is harmless. A batch is repeated after an ambiguous failure only if each
        of its runs has an external_id."""
        if not 1 <= batch_size <= schemas.MAX_RUN_BATCH:
            raise ValueError(f"batch_size must be within 1..{schemas.MAX_RUN_BATCH}")
        bodies = [
            _build(schemas.RunImport, run, loc=("body", "runs", index))
            for index, run in enumerate(runs)
        ]
        path = f"{API_PREFIX}/experiments/{_q(experiment_id)}/runs/batch"
        items: list[schemas.Run] = []
        new = 0

        def send(start: int, stop: int) -> None:
            nonlocal new
            batch = bodies[start:stop]
            try:
                result = self._model(
                    schemas.RunBatchResult,
                    "POST",
                    path,
                    json={"runs": [self._body(b) for b in batch]},
                    idempotent=all(b.external_id is not None for b in batch),
                )
            except PayloadTooLargeError:
                if len(batch) == 1:
                    raise
                middle = (start + stop) // 2
                send(start, middle)
                send(middle, stop)
                return
            except ValidationError as exc:
                raise _rows_shifted(exc, start) from None
            items.extend(result.items)
            new += result.new

        for start in range(0, len(bodies), batch_size):
            send(start, min(start + batch_size, len(bodies)))
        return schemas.RunBatchResult(items=items, new=new)

    def list_runs(
        self,
        experiment_id: str,
        *,
        status: RunStatus | None = None,
        excluded: bool | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> schemas.Page[schemas.Run]:
        """One page of ``GET /experiments/{id}/runs``, oldest first."""
        return self._page(
            schemas.Run,
            f"{API_PREFIX}/experiments/{_q(experiment_id)}/runs",
            {
                "status": status,
                "excluded": None if excluded is None else str(excluded).lower(),
                "limit": self._limit(limit),
                "cursor": cursor,
            },
        )

    def iter_runs(
        self,
        experiment_id: str,
        *,
        status: RunStatus | None = None,
        excluded: bool | None = None,
        page_size: int = 1000,
    ) -> Iterator[schemas.Run]:
        """Every run of the experiment (matching the filters), page after page."""
        return self._iterate(
            lambda cursor: self.list_runs(
                experiment_id, status=status, excluded=excluded, limit=page_size, cursor=cursor
            )
        )

    def get_run(self, run_id: str) -> schemas.Run:
        return self._model(schemas.Run, "GET", f"{API_PREFIX}/runs/{_q(run_id)}")

    def claim(
        self, experiment_id: str, worker: str, *, lease_seconds: int = 600
    ) -> schemas.Run | None:
        """``POST /experiments/{id}/claim``: lease the oldest pending run (now running), or
        None when there is none (204). Not repeated after an ambiguous failure: a lost answer
        would leave a second run leased until its lease expires."""
        body = _build(schemas.ClaimRequest, worker=worker, lease_seconds=lease_seconds)
        response = self._send(
            "POST",
            f"{API_PREFIX}/experiments/{_q(experiment_id)}/claim",
            json=self._body(body),
            idempotent=False,
        )
        if response.status_code == 204:
            return None
        return schemas.Run.model_validate(response.json())

    def heartbeat(
        self, run_id: str, worker: str, *, lease_seconds: int | None = None
    ) -> schemas.Run:
        """``POST /runs/{id}/heartbeat``: extend the lease (409 if ``worker`` does not hold it)."""
        body = _build(schemas.HeartbeatRequest, worker=worker, lease_seconds=lease_seconds)
        return self._model(
            schemas.Run, "POST", f"{API_PREFIX}/runs/{_q(run_id)}/heartbeat", json=self._body(body)
        )

    def append_metrics(
        self,
        run_id: str,
        points: Iterable[schemas.MetricPoint | tuple[str, int, float] | Mapping[str, Any]],
    ) -> schemas.MetricsAccepted:
        """``POST /runs/{id}/metrics`` in batches of at most 10,000 points; the counts are
        summed over the batches. Points are ``MetricPoint``s, ``(name, step, value)`` tuples or
        dicts. Each batch is all-or-nothing; a conflicting batch raises ``ConflictError`` after
        the earlier batches were stored (repeating them is harmless)."""
        accepted = new = 0
        batch: list[schemas.MetricPoint] = []

        def send() -> None:
            nonlocal accepted, new
            body = schemas.MetricsBatch.model_construct(points=batch)
            result = self._model(
                schemas.MetricsAccepted,
                "POST",
                f"{API_PREFIX}/runs/{_q(run_id)}/metrics",
                json=self._body(body),
            )
            accepted += result.accepted
            new += result.new

        for index, point in enumerate(points):
            if isinstance(point, tuple):
                name, step, value = point
                point = {"name": name, "step": step, "value": value}
            batch.append(_build(schemas.MetricPoint, point, loc=("body", "points", index)))
            if len(batch) == METRICS_BATCH:
                send()
                batch = []
        if batch:
            send()
        return schemas.MetricsAccepted(accepted=accepted, new=new)

    def list_metrics(
        self,
        run_id: str,
        *,
        name: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> schemas.Page[schemas.StoredPoint]:
        """One page of ``GET /runs/{id}/metrics``, ordered by step."""
        return self._page(
            schemas.StoredPoint,
            f"{API_PREFIX}/runs/{_q(run_id)}/metrics",
            {"name": name, "limit": self._limit(limit), "cursor": cursor},
        )

    def iter_metrics(
        self, run_id: str, *, name: str | None = None, page_size: int = 1000
    ) -> Iterator[schemas.StoredPoint]:
        """Every stored point of the run (of metric ``name``), page after page."""
        return self._iterate(
            lambda cursor: self.list_metrics(run_id, name=name, limit=page_size, cursor=cursor)
        )

    def complete(
        self,
        run_id: str,
        metrics: Mapping[str, float] | None = None,
        *,
        worker: str | None = None,
    ) -> schemas.Run:
        """``POST /runs/{id}/complete``: final metrics (offline), or the end of an online
        training run (its mixer state is frozen). Repeating it is harmless."""
        body = _build(schemas.CompleteRequest, metrics=dict(metrics or {}), worker=worker)
        return self._model(
            schemas.Run, "POST", f"{API_PREFIX}/runs/{_q(run_id)}/complete", json=self._body(body)
        )

    def fail(self, run_id: str, reason: str = "", *, worker: str | None = None) -> schemas.Run:
        """``POST /runs/{id}/fail``: this attempt failed; the run returns to pending until
        ``max_attempts``. Pass ``worker``: only then is a repeat recognised (without it, an
        ambiguous failure is not retried since a repeat would count a second attempt)."""
        body = _build(schemas.FailRequest, reason=reason, worker=worker)
        return self._model(
            schemas.Run,
            "POST",
            f"{API_PREFIX}/runs/{_q(run_id)}/fail",
            json=self._body(body),
            idempotent=worker is not None,
        )

    def release(self, run_id: str, worker: str) -> schemas.Run:
        """``POST /runs/{id}/release``: give the lease back (pending again, same attempt)."""
        body = _build(schemas.ReleaseRequest, worker=worker)
        return self._model(
            schemas.Run, "POST", f"{API_PREFIX}/runs/{_q(run_id)}/release", json=self._body(body)
        )

    def retry_run(self, run_id: str) -> schemas.Run:
        """``POST /runs/{id}/retry``: a failed offline run back to pending with a fresh attempt
        budget (``ConflictError`` for a run in any other status)."""
        return self._model(schemas.Run, "POST", f"{API_PREFIX}/runs/{_q(run_id)}/retry")

    def exclude(
        self, run_id: str, excluded: bool = True, *, reason: str | None = None
    ) -> schemas.Run:
        """``POST /runs/{id}/exclude``: leave the run out of fits (or, ``excluded=False``,
        include it again)."""
        body = _build(schemas.ExcludeRequest, excluded=excluded, reason=reason)
        return self._model(
            schemas.Run, "POST", f"{API_PREFIX}/runs/{_q(run_id)}/exclude", json=self._body(body)
        )

    def export_runs_csv(self, experiment_id: str) -> str:
        """``GET /experiments/{id}/runs.csv``: every run; ``mixopt runs import`` reads it back."""
        return self._send("GET", f"{API_PREFIX}/experiments/{_q(experiment_id)}/runs.csv").text

    def export_experiment(self, experiment_id: str, *, timeout: float = 600) -> bytes:
        """``GET /experiments/{id}/export`` (admin): the experiment archive, as JSON bytes."""
        return self._send(
            "GET", f"{API_PREFIX}/experiments/{_q(experiment_id)}/export", timeout=timeout
        ).content

    def import_experiment(
        self, archive: bytes, *, name: str | None = None, timeout: float = 600
    ) -> ImportedExperiment:
        """``POST /experiments/import`` (admin): write an archive (JSON or gzip'd JSON bytes)
        as a new experiment, renamed to ``name`` if given. The same archive again returns that
        experiment with ``created=False``, so a repeat after a lost answer is safe."""
        response = self._send(
            "POST",
            f"{API_PREFIX}/experiments/import",
            content=archive,
            params={"name": name},
            headers={
                "Content-Type": "application/gzip"
                if archive[:2] == b"\x1f\x8b"
                else "application/json"
            },
            timeout=timeout,
        )
        return ImportedExperiment.model_validate(
            {**response.json(), "created": response.status_code == 201}
        )

    # --- fits ---

    def fit(
        self, experiment_id: str, model: str = "auto", *, wait: bool = True
    ) -> schemas.FitReport:
        """``POST /experiments/{id}/fit``: fit ``model`` (or compare them all: ``auto``) on the
        completed, non-excluded runs, cross-validate, and search and store the recommendation
        (409 with fewer than 8 usable runs). A repeat after a lost answer stores one more fit
        of the same runs, which changes nothing that reads the latest fit.

        ``wait=False``: the server answers at once with the fit ``running``; follow it with
        ``wait_for_fit``."""
        body = self._body(_build(schemas.FitRequest, model=model, wait=wait))
        if wait:
            del body["wait"]  # the default: a server older than ``wait`` accepts the body
        return self._model(
            schemas.FitReport,
            "POST",
            f"{API_PREFIX}/experiments/{_q(experiment_id)}/fit",
            json=body,
        )

    def wait_for_fit(
        self,
        fit_id: str,
        *,
        poll: float = 1.0,
        timeout: float | None = None,
        on_progress: Callable[[schemas.FitReport], None] | None = None,
    ) -> schemas.FitReport:
        """Poll ``GET /fits/{id}`` every ``poll`` seconds until the fit is no longer running;
        its last report (``status`` completed or failed, with a ``reason``). ``on_progress``
        sees every report polled; ``TimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            report = self.get_fit(fit_id)
            if on_progress is not None:
                on_progress(report)
            if report.status != "running":
                return report
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"fit {fit_id} still running after {timeout} s")
            self._sleep(poll)

    def backtest(
        self,
        experiment_id: str,
        *,
        models: Sequence[str] | None = None,
        sizes: Sequence[int] | None = None,
        designs: Sequence[str] = ("stored",),
        reference_model: str = "lightgbm",
        timeout: float = 1800,
    ) -> schemas.BacktestReport:
        """``POST /experiments/{id}/backtest``: replay the usable runs with each model, size and
        design (see ``mixers.backtest``). Stores nothing, so it is safe to repeat; it can take
        minutes, hence its own ``timeout``."""
        body = _build(
            schemas.BacktestRequest,
            models=list(models) if models is not None else None,
            sizes=list(sizes) if sizes is not None else None,
            designs=list(designs),
            reference_model=reference_model,
        )
        return self._model(
            schemas.BacktestReport,
            "POST",
            f"{API_PREFIX}/experiments/{_q(experiment_id)}/backtest",
            json=self._body(body),
            timeout=timeout,
        )

    def list_fits(
        self, experiment_id: str, *, limit: int = 100, cursor: str | None = None
    ) -> schemas.Page[schemas.FitReport]:
        """One page of ``GET /experiments/{id}/fits``, newest first."""
        return self._page(
            schemas.FitReport,
            f"{API_PREFIX}/experiments/{_q(experiment_id)}/fits",
            {"limit": self._limit(limit), "cursor": cursor},
        )

    def iter_fits(self, experiment_id: str, *, page_size: int = 100) -> Iterator[schemas.FitReport]:
        return self._iterate(
            lambda cursor: self.list_fits(experiment_id, limit=page_size, cursor=cursor)
        )

    def get_fit(self, fit_id: str) -> schemas.FitReport:
        return self._model(schemas.FitReport, "GET", f"{API_PREFIX}/fits/{_q(fit_id)}")

    def predict(
        self,
        experiment_id: str,
        mixtures: Sequence[schemas.MixtureIn | Mapping[str, float]],
    ) -> list[schemas.Predicted]:
        """``POST /experiments/{id}/predict`` (read scope): the latest fit's prediction for each
        mixture (``MixtureIn``, or a plain ``{domain: weight}`` dict); 409 before any fit."""
        items = [m if isinstance(m, schemas.MixtureIn) else {"weights": dict(m)} for m in mixtures]
        body = _build(schemas.PredictRequest, mixtures=items)
        data = self._json(
            "POST", f"{API_PREFIX}/experiments/{_q(experiment_id)}/predict", json=self._body(body)
        )
        return schemas.PredictionList.model_validate(data).items

    def recommendation(self, experiment_id: str) -> schemas.Recommendation:
        """``GET /experiments/{id}/recommendation``: the latest fit's stored recommendation
        (offline; 409 before any fit) or the weights to reuse (online)."""
        return self._model(
            schemas.Recommendation,
            "GET",
            f"{API_PREFIX}/experiments/{_q(experiment_id)}/recommendation",
        )

    # --- online ---

    def start_run(
        self,
        experiment_id: str,
        name: str,
        *,
        total_steps: int | None = None,
        tags: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> schemas.Run:
        """``POST /experiments/{id}/runs`` of an online experiment: a training run with its first
        weights. ``request_id`` (default: a fresh uuid4, reused by retries) makes it idempotent."""
        body = _build(
            schemas.OnlineRunCreate,
            name=name,
            total_steps=total_steps,
            tags=dict(tags) if tags else None,
            request_id=request_id or uuid.uuid4().hex,
        )
        return self._model(
            schemas.Run,
            "POST",
            f"{API_PREFIX}/experiments/{_q(experiment_id)}/runs",
            json=self._body(body),
        )

    def get_weights(self, run_id: str, *, use_cache: bool = True) -> schemas.Weights:
        """``GET /runs/{id}/weights``, the current weights. The client remembers the last answer
        per run and sends its ETag as ``If-None-Match``; on 304 it returns that same object."""
        path = f"{API_PREFIX}/runs/{_q(run_id)}/weights"
        cached = self._weights_cache.get(run_id) if use_cache else None
        headers = {"If-None-Match": cached[0]} if cached else None
        response = self._send("GET", path, headers=headers)
        if response.status_code == 304 and cached is not None:
            return cached[1]
        return self._current_weights(run_id, response)

    def _current_weights(self, run_id: str, response: httpx.Response) -> schemas.Weights:
        """Parse an answer holding the run's current weights and remember it with its ETag."""
        weights = schemas.Weights.model_validate(response.json())
        etag = response.headers.get("etag") or f'"{weights.version}"'
        self._weights_cache[run_id] = (etag, weights)
        return weights

    def weights_at(self, run_id: str, step: int) -> schemas.Weights:
        """``GET /runs/{id}/weights?at_step=S``: the weights in effect at step ``step``."""
        return self._model(
            schemas.Weights,
            "GET",
            f"{API_PREFIX}/runs/{_q(run_id)}/weights",
            params={"at_step": step},
        )

    def weights_history(
        self, run_id: str, *, limit: int = 100, cursor: str | None = None
    ) -> schemas.Page[schemas.WeightsVersion]:
        """One page of ``GET /runs/{id}/weights/history``: versions with step, weights, phase."""
        return self._page(
            schemas.WeightsVersion,
            f"{API_PREFIX}/runs/{_q(run_id)}/weights/history",
            {"limit": self._limit(limit), "cursor": cursor},
        )

    def iter_weights_history(
        self, run_id: str, *, page_size: int = 1000
    ) -> Iterator[schemas.WeightsVersion]:
        return self._iterate(
            lambda cursor: self.weights_history(run_id, limit=page_size, cursor=cursor)
        )

    def feedback(
        self,
        run_id: str,
        step: int,
        *,
        version: int | None = None,
        train_losses: Mapping[str, float] | None = None,
        eval_losses: Mapping[str, float] | None = None,
        tokens: Mapping[str, int] | None = None,
    ) -> schemas.Weights:
        """``POST /runs/{id}/feedback``: the segment that ended at global ``step``; returns the
        next weights (remembered for ``get_weights``). Idempotent on (run, step)."""
        body = _build(
            schemas.Feedback,
            step=step,
            version=version,
            train_losses=dict(train_losses) if train_losses else None,
            eval_losses=dict(eval_losses) if eval_losses else None,
            tokens=dict(tokens) if tokens else None,
        )
        response = self._send(
            "POST", f"{API_PREFIX}/runs/{_q(run_id)}/feedback", json=self._body(body)
        )
        return self._current_weights(run_id, response)

    def resume(self, run_id: str, step: int) -> schemas.Weights:
        """``POST /runs/{id}/resume``: the trainer restarted from a checkpoint at ``step``."""
        body = _build(schemas.ResumeRequest, step=step)
        response = self._send(
            "POST", f"{API_PREFIX}/runs/{_q(run_id)}/resume", json=self._body(body)
        )
        return self._current_weights(run_id, response)

    # --- tokens (admin) ---

    def create_token(
        self,
        name: str,
        scope: schemas.Scope = "write",
        *,
        expires_in_days: int | None = None,
    ) -> schemas.TokenCreated:
        """``POST /tokens``: the answer holds the secret, shown only this once. Not repeated
        after an ambiguous failure (it has no request_id; a repeat would make a second token)."""
        body = _build(schemas.TokenCreate, name=name, scope=scope, expires_in_days=expires_in_days)
        return self._model(
            schemas.TokenCreated,
            "POST",
            f"{API_PREFIX}/tokens",
            json=self._body(body),
            idempotent=False,
        )

    def list_tokens(
        self, *, limit: int = 100, cursor: str | None = None
    ) -> schemas.Page[schemas.Token]:
        """One page of ``GET /tokens`` (never the secrets)."""
        return self._page(
            schemas.Token, f"{API_PREFIX}/tokens", {"limit": self._limit(limit), "cursor": cursor}
        )

    def iter_tokens(self, *, page_size: int = 1000) -> Iterator[schemas.Token]:
        return self._iterate(lambda cursor: self.list_tokens(limit=page_size, cursor=cursor))

    def revoke_token(self, token_id: str) -> schemas.Token:
        """``DELETE /tokens/{id}``."""
        return self._model(schemas.Token, "DELETE", f"{API_PREFIX}/tokens/{_q(token_id)}")
