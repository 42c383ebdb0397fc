"""The two hottest calls answered before FastAPI routes anything: metric appends and weights polls.

Profiled under the ingest benchmark, FastAPI's own request handling (matching the path against
every route, solving the dependencies, reading parameters) cost more CPU than the append's
validation; on a weights poll answered from the cache it is most of the request. This
middleware answers those two calls itself, but only the plain, successful case, decided without
any side effect:

- ``POST /api/v1/runs/{run_id}/metrics`` whose token is cached and admitted (see
  ``Authenticator.cached_principal``), with a JSON body that validates;
- ``GET /api/v1/runs/{run_id}/weights`` without a query string, whose token is cached and
  admitted, and whose current version is in the weights cache and not older than what
  ``If-None-Match`` names.

Anything else (no or a refused token, a token to look up, another media type, a body that does
not validate, ``at_step``, a cache miss) goes on to the FastAPI route unchanged, which answers,
refuses, counts and throttles exactly as before. What the store raises on an append (404, 409,
422, 503) is answered by the app's own exception handlers, so every problem document is the
one the route would send. The answers themselves come from the routes' functions
(``metrics_accepted``, ``weights_answer``), and ``scope["route"]`` is set to the FastAPI
route so the request metrics label them the same. The routes stay the documented operations.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from fastapi import FastAPI
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from mixopt import schemas
from mixopt.schemas import API_PREFIX
from service.api.routes import online, runs
from service.api.routes.online import newest_known, weights_answer
from service.api.routes.runs import metrics_accepted
from service.auth import Authenticator
from service.middleware import replaying
from service.store import Store

__all__ = ["HotPathMiddleware"]

# As FastAPI matches ``{run_id}``: one path segment.
_METRICS = re.compile(rf"{re.escape(API_PREFIX)}/runs/([^/]+)/metrics")
_WEIGHTS = re.compile(rf"{re.escape(API_PREFIX)}/runs/([^/]+)/weights")


class HotPathMiddleware:
    """See the module's docstring. ``api`` is the FastAPI app (its state, routes and exception
    handlers); the middleware sits inside the body limit, CORS and request metrics."""

    def __init__(self, app: ASGIApp, api: FastAPI) -> None:
        self.app = app
        self.api = api
        self._append_route = _named(runs.router.routes, "append_metrics")
        self._weights_route = _named(online.router.routes, "get_weights")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method, path = scope["method"], scope["path"]
            if method == "POST" and (match := _METRICS.fullmatch(path)):
                await self._append_metrics(match[1], scope, receive, send)
                return
            if (
                method == "GET"
                and (match := _WEIGHTS.fullmatch(path))
                and await self._cached_weights(match[1], scope, receive, send)
            ):
                return
        await self.app(scope, receive, send)

    def _principal_admitted(self, scope: Scope, required: str) -> bool:
        auth: Authenticator = self.api.state.auth
        authorization = _header(scope, b"authorization")
        return auth.cached_principal(authorization, required) is not None

    async def _append_metrics(
        self, run_id: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if not self._principal_admitted(scope, "write") or not _is_plain_json(scope):
            await self.app(scope, receive, send)
            return
        body, receive = await _read_body(receive)
        if body is None:  # the client went away
            return
        try:
            batch = schemas.MetricsBatch.model_validate_json(body) if body else None
        except ValidationError:
            batch = None
        if batch is None:  # the route answers the 422 (with the field at fault)
            await self.app(scope, receive, send)
            return
        store: Store = self.api.state.store
        points = [(p.name, p.step, p.value) for p in batch.points]
        self._matched(scope, self._append_route, run_id)
        try:
            accepted, new = await run_in_threadpool(store.append_metrics, run_id, points)
            response = metrics_accepted(accepted, new)
        except Exception as exc:
            response = await self._handled(scope, exc)
        await response(scope, receive, send)

    async def _cached_weights(
        self, run_id: str, scope: Scope, receive: Receive, send: Send
    ) -> bool:
        if scope.get("query_string") or not self._principal_admitted(scope, "read"):
            return False
        store: Store = self.api.state.store
        record = store.cached_weights(run_id)
        if_none_match = _header(scope, b"if-none-match")
        if record is None or record.version < newest_known(if_none_match):
            return False  # the route reads the database
        self._matched(scope, self._weights_route, run_id)
        await weights_answer(record, if_none_match)(scope, receive, send)
        return True

    @staticmethod
    def _matched(scope: Scope, route: BaseRoute, run_id: str) -> None:
        # What the router would have stored: the request metrics label by the route's name.
        scope["route"] = route
        scope["path_params"] = {"run_id": run_id}

    async def _handled(self, scope: Scope, exc: Exception) -> Response:
        """The answer the app's exception handlers give ``exc``; anything they do not handle
        (or re-raise) propagates to the server-error middleware, as from a route."""
        handlers: dict[Any, Any] = self.api.exception_handlers
        handler = next(
            # ``Exception`` (500) is the server-error middleware's, as for a route.
            (handlers[c] for c in type(exc).__mro__ if c in handlers and c is not Exception),
            None,
        )
        if handler is None:
            raise exc
        response = handler(Request(scope), exc)
        if inspect.isawaitable(response):
            response = await response
        assert isinstance(response, Response)
        return response


def _named(routes: list[BaseRoute], name: str) -> BaseRoute:
    return next(route for route in routes if getattr(route, "name", None) == name)


def _header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower case), as Starlette's ``Headers.get``."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _is_plain_json(scope: Scope) -> bool:
    """Whether the body is declared ``application/json`` (other JSON types: the route)."""
    content_type = _header(scope, b"content-type")
    return content_type is not None and content_type.partition(";")[0].strip().lower() == (
        "application/json"
    )


async def _read_body(receive: Receive) -> tuple[bytes | None, Receive]:
    """The whole body (None if the client disconnected) and a ``receive`` that replays it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None, receive
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    return body, replaying(body, receive)
