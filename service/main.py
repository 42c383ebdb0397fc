"""The FastAPI application: ``create_app`` builds it around a Store; nothing happens at import."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from mixopt import __version__, schemas
from mixopt.schemas import API_PREFIX
from mixopt.settings import Settings
from service.api.hot_paths import HotPathMiddleware
from service.api.routes import dashboard, docs, experiments, online, ops, runs, tokens
from service.auth import Authenticator, FailureThrottle
from service.fit_runner import FitRunner
from service.middleware import BodyLimitMiddleware, RequestMetrics, RequestMetricsMiddleware
from service.openapi_doc import add_links, add_unsupported_media_type
from service.operations import Operations
from service.problems import install_problem_handlers
from service.store import Store
from service.store.archive import ExperimentArchive
from service.store.unavailable import database_unavailable, describe

__all__ = ["API_PREFIX", "create_app"]

log = logging.getLogger("mixopt.service")


async def _sweep_leases(store: Store, every: float) -> None:
    """Return expired leases to pending even when nobody claims (claims also do it)."""
    while True:
        await asyncio.sleep(every)
        try:
            returned = await run_in_threadpool(store.expire_leases)
            if returned:
                log.info("returned %d runs with expired leases", returned)
        except Exception as exc:
            # Never ends the loop: leases must expire again once the database is back.
            if database_unavailable(exc):  # expected during an outage: one line, no stack
                log.warning("lease sweep: database unavailable (%s); retrying later", describe(exc))
            else:
                log.exception("lease sweep failed; retrying later")


def create_app(settings: Settings, store: Store) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        sweeper = asyncio.create_task(_sweep_leases(store, settings.lease_sweep_seconds))
        await fits.start()
        try:
            yield
        finally:
            sweeper.cancel()
            await fits.stop()

    app = FastAPI(
        title="mixopt",
        version=__version__,
        description="Finds the best data mixture for training a language model. "
        "HTTP API version 1; this document is its reference.",
        lifespan=lifespan,
        # Served by routes.docs from the installed package instead of a CDN (works offline).
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.store = store
    fits = FitRunner(store, settings.fit_workers, niceness=settings.fit_niceness)
    app.state.ops = Operations(store, fits)
    app.state.request_metrics = RequestMetrics()
    app.state.auth = Authenticator(
        store,
        enabled=not settings.no_auth,
        cache_seconds=settings.token_cache_seconds,
        on_failure=app.state.request_metrics.auth_failed,
    )
    app.state.auth_throttle = FailureThrottle(free=settings.auth_free_failures)

    api = APIRouter(prefix=API_PREFIX)
    api.include_router(experiments.router)
    api.include_router(runs.router)
    api.include_router(online.router)
    api.include_router(tokens.router)
    app.include_router(api)
    app.include_router(ops.router)
    app.include_router(docs.router)
    app.include_router(dashboard.ui)
    app.include_router(dashboard.home)
    app.include_router(dashboard.pages)

    install_problem_handlers(app)
    # Innermost: inside the body limit, CORS and the request metrics, as the routes are.
    app.add_middleware(HotPathMiddleware, api=app)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        per_path={f"{API_PREFIX}/experiments/import": settings.max_import_bytes},
    )
    if settings.cors_origins:
        # Closed unless configured: a browser app on another origin may call the API only
        # from the origins listed (tokens travel in the Authorization header, not cookies).
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "If-None-Match"],
            expose_headers=["ETag", "Retry-After"],
            max_age=600,
        )
    app.add_middleware(RequestMetricsMiddleware, metrics=app.state.request_metrics)

    original_openapi = app.openapi

    def openapi() -> dict[str, object]:
        if app.openapi_schema is None:
            document = original_openapi()
            components = document.setdefault("components", {})
            assert isinstance(components, dict)
            known = components.setdefault("schemas", {})
            # Problem documents every error; the run bodies are referenced by a oneOf that
            # FastAPI does not see (the body is validated against the experiment's mode).
            for model in (
                schemas.Problem,
                schemas.RunImport,
                schemas.OnlineRunCreate,
                ExperimentArchive,  # the body of import and the answer of export
                schemas.MetricsBatch,  # validated from the raw bytes: see service.api.body
            ):
                found = model.model_json_schema(ref_template="#/components/schemas/{model}")
                known.update(found.pop("$defs", {}))
                known[model.__name__] = found
            components.setdefault("securitySchemes", {})["bearer"] = {
                "type": "http",
                "scheme": "bearer",
            }
            document["security"] = [{"bearer": []}]
            add_links(document)
            add_unsupported_media_type(document)
        return app.openapi_schema or document

    app.openapi = openapi  # type: ignore[method-assign]
    return app
