"""Operations: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from service.problems import unavailable_response
from service.store import Store
from service.store.unavailable import database_unavailable, describe

log = logging.getLogger("mixopt.service")

router = APIRouter(tags=["operations"])

# These need no token: the document says so, overriding its global bearer requirement.
PUBLIC: dict[str, Any] = {"security": []}


@router.get("/healthz", openapi_extra=PUBLIC)
async def healthz() -> dict[str, str]:
    """The process is up (no database call)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"description": "database unreachable or not migrated"}},
    openapi_extra=PUBLIC,
)
async def readyz(request: Request) -> JSONResponse:
    """The database answers and its schema is at the head revision."""
    store: Store = request.app.state.store
    try:
        await run_in_threadpool(store.check_ready)
    except Exception as exc:  # any failure means "not ready"
        if database_unavailable(exc):
            # The driver's message (host, port, statement) goes to the log, not the answer.
            log.warning("not ready: database unavailable: %s", describe(exc))
            return unavailable_response("not ready: the database is unreachable", slug="not-ready")
        if isinstance(exc, RuntimeError):  # check_ready's own account of the schema revision
            return unavailable_response(f"not ready: {exc}", slug="not-ready")
        log.exception("not ready", exc_info=exc)
        return unavailable_response(f"not ready: {type(exc).__name__}", slug="not-ready")
    return JSONResponse({"status": "ready"})


@router.get("/metrics", response_class=Response, openapi_extra=PUBLIC)
async def metrics(request: Request) -> Response:
    return Response(
        generate_latest(request.app.state.request_metrics.registry),
        media_type=CONTENT_TYPE_LATEST,
    )
