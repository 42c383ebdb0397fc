"""Annotated dependencies shared by the routers: the store, the mixers' operations and scopes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from mixopt.errors import Unauthorized
from service.api.body import is_json
from service.auth import SCOPE_RANK, Authenticator, FailureThrottle, Principal
from service.operations import Operations
from service.problems import problem_response
from service.store import Store

__all__ = [
    "AdminDep",
    "AuthenticatedRoute",
    "OpsDep",
    "ReadDep",
    "StoreDep",
    "WriteDep",
    "require",
]


# Dependencies are ``async def`` although they never await: FastAPI runs a plain ``def``
# dependency in the thread pool, a hop per dependency per request (three on a weights poll).


async def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


async def get_ops(request: Request) -> Operations:
    ops: Operations = request.app.state.ops
    return ops


def require(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that admits tokens of ``scope`` or a wider one."""

    async def check(request: Request) -> Principal:
        # AuthenticatedRoute has already checked the widest scope the route requires.
        principal: Principal | None = getattr(request.state, "principal", None)
        if principal is not None:
            return principal
        auth: Authenticator = request.app.state.auth
        # Read from the request, not declared as a Header parameter: the security scheme
        # documents it, and FastAPI's header alias makes pydantic warn on every start.
        header = request.headers.get("authorization")
        return await run_in_threadpool(auth.authenticate, header, scope)

    check.__name__ = f"require_{scope}"
    check.required_scope = scope  # type: ignore[attr-defined]
    return check


class AuthenticatedRoute(APIRoute):
    """A route that checks the token before FastAPI reads and validates the body.

    FastAPI parses the JSON body before it solves any dependency, so with the scope check only
    in a dependency an anonymous caller sending malformed JSON got 422 instead of 401 (and could
    probe the validation rules). The required scope is the widest among the route's ``require``
    dependencies.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        scopes = [
            scope
            for dependency in self.dependencies
            if (scope := getattr(dependency.dependency, "required_scope", None)) is not None
        ]
        if not scopes:
            return handler
        required = max(scopes, key=SCOPE_RANK.__getitem__)
        media_types = _documented_body_types(self)

        async def authenticated(request: Request) -> Response:
            auth: Authenticator = request.app.state.auth
            header = request.headers.get("authorization")
            try:
                # A cached token is checked on the event loop; only a lookup goes to a thread.
                principal = auth.authenticate_cached(header, required)
                if principal is None:
                    principal = await run_in_threadpool(auth.authenticate, header, required)
            except Unauthorized:
                throttle: FailureThrottle = request.app.state.auth_throttle
                await throttle.refused(request.client.host if request.client else "unknown")
                raise
            request.state.principal = principal
            if media_types and (refused := await _refuse_media_type(request, media_types)):
                return refused
            return await handler(request)

        return authenticated


def _documented_body_types(route: APIRoute) -> frozenset[str]:
    """The media types of the route's body: as its document declares them, else JSON."""
    extra: dict[str, Any] = route.openapi_extra or {}
    documented = extra.get("requestBody", {}).get("content")
    if documented:
        return frozenset(documented)
    return frozenset({"application/json"}) if route.body_field is not None else frozenset()


async def _refuse_media_type(request: Request, accepted: frozenset[str]) -> Response | None:
    """A body of a type the route does not document is 415 (FastAPI answered 422 "not a
    dictionary" to a text/plain body).

    A body without a Content-Type is read as JSON, as FastAPI does; an empty body is left to the
    route (some bodies are optional).
    """
    content_type = request.headers.get("content-type")
    if content_type is None or not await request.body():
        return None
    media = content_type.partition(";")[0].strip().lower()
    if media in accepted or ("application/json" in accepted and is_json(content_type)):
        return None
    return problem_response(
        415,
        f"the body must be {' or '.join(sorted(accepted))}, not {content_type!r}",
        slug="unsupported-media-type",
    )


StoreDep = Annotated[Store, Depends(get_store)]
OpsDep = Annotated[Operations, Depends(get_ops)]
ReadDep = Depends(require("read"))
WriteDep = Depends(require("write"))
AdminDep = Depends(require("admin"))
