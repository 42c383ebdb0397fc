"""Typed HTTP client of the mixopt API (version 1).

It needs only httpx and pydantic (through ``mixopt.schemas``), so trainers on any framework can use
it without the server's dependencies::

    from mixopt.client import MixoptClient

    with MixoptClient("http://mixopt:8000", token) as client:
        while (run := client.claim(experiment_id, "node3/gpu1")) is not None:
            metrics = train(run.weights)
            client.complete(run.id, metrics, worker="node3/gpu1")

Retries: every call is retried with exponential backoff and full jitter when the server answers
503 (the database was unavailable; nothing was written) or the connection fails before the
request was sent. Failures after the request may have reached the server (a read timeout, a
dropped connection) are retried only for calls the contract makes idempotent: reads, and writes
that are safe to repeat (creating calls carry a ``request_id`` that is generated once per call and
reused by its retries; imports carry an ``external_id``). ``claim``, ``create_experiment``, an
import without ``external_id``, ``fail`` without ``worker`` and ``create_token`` are not repeated
after such a failure: the error is raised instead. The retry loop is a dozen lines here rather
than a dependency (tenacity), so that the client stays httpx + pydantic only.

Errors: an answer with a problem document raises a ``MixoptAPIError`` subclass chosen by status
(``NotFoundError``, ``ConflictError``, ``ValidationError``, ``AuthError``...) carrying the parsed
``schemas.Problem``. Bodies that fail the shared schemas' validation before being sent raise the
same ``ValidationError`` (with ``local=True``). Connection failures that outlast the retries raise
the underlying ``httpx.TransportError``.

Everything is importable from ``mixopt.client``; the modules are ``errors`` (the exceptions),
``online`` (``OnlineMixture``) and ``_http`` (``MixoptClient``).
"""

from __future__ import annotations

from mixopt.client._http import METRICS_BATCH, ImportedExperiment, ImportedRun, MixoptClient
from mixopt.client.errors import (
    AuthError,
    ConflictError,
    ForbiddenError,
    MixoptAPIError,
    NotFoundError,
    PayloadTooLargeError,
    ServerError,
    ServiceUnavailableError,
    UnauthorizedError,
    ValidationError,
    error_from_response,
)
from mixopt.client.online import OnlineMixture

# The client's signatures use these; they are defined once, in the wire schemas.
from mixopt.schemas import API_PREFIX, DEFAULT_URL, ExperimentStatus, ImportStatus, RunStatus

__all__ = [
    "API_PREFIX",
    "DEFAULT_URL",
    "METRICS_BATCH",
    "AuthError",
    "ConflictError",
    "ExperimentStatus",
    "ForbiddenError",
    "ImportStatus",
    "ImportedExperiment",
    "ImportedRun",
    "MixoptAPIError",
    "MixoptClient",
    "NotFoundError",
    "OnlineMixture",
    "PayloadTooLargeError",
    "RunStatus",
    "ServerError",
    "ServiceUnavailableError",
    "UnauthorizedError",
    "ValidationError",
    "error_from_response",
]
