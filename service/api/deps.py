"""Annotated dependencies shared by the routers: the store, the mixers' operations and scopes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from mixopt.errors import Unauthorized
from service.auth import SCOPE_RANK, Authenticator, FailureThrottle, Principal
from service.operations import Operations
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
            return await handler(request)

        return authenticated


StoreDep = Annotated[Store, Depends(get_store)]
OpsDep = Annotated[Operations, Depends(get_ops)]
ReadDep = Depends(require("read"))
WriteDep = Depends(require("write"))
AdminDep = Depends(require("admin"))
