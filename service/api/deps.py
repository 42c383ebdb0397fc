"""Annotated dependencies shared by the routers: the store, the mixers' operations and scopes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Header, Request

from service.auth import Authenticator, Principal
from service.operations import Operations
from service.store import Store

__all__ = ["AdminDep", "OpsDep", "ReadDep", "StoreDep", "WriteDep", "require"]


def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def get_ops(request: Request) -> Operations:
    ops: Operations = request.app.state.ops
    return ops


def require(scope: str) -> Callable[..., Principal]:
    """A dependency that admits tokens of ``scope`` or a wider one."""

    def check(
        request: Request,
        authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> Principal:
        auth: Authenticator = request.app.state.auth
        return auth.authenticate(authorization, scope)

    check.__name__ = f"require_{scope}"
    return check


StoreDep = Annotated[Store, Depends(get_store)]
OpsDep = Annotated[Operations, Depends(get_ops)]
ReadDep = Depends(require("read"))
WriteDep = Depends(require("write"))
AdminDep = Depends(require("admin"))
