"""API tokens (admin): create (the secret is shown once), list, revoke."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request, status

from mixopt import schemas
from service.api.deps import AdminDep, AuthenticatedRoute, StoreDep
from service.auth import Authenticator
from service.convert import token_out
from service.problems import PROBLEM_RESPONSES
from service.store.sql import utcnow

router = APIRouter(
    prefix="/tokens", tags=["tokens"], responses=PROBLEM_RESPONSES, route_class=AuthenticatedRoute
)


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=[AdminDep])
def create_token(body: schemas.TokenCreate, store: StoreDep) -> schemas.TokenCreated:
    expires = (
        utcnow() + timedelta(days=body.expires_in_days)
        if body.expires_in_days is not None
        else None
    )
    record, secret = store.create_token(body.name, body.scope, expires)
    return schemas.TokenCreated(**token_out(record).model_dump(), token=secret)


@router.get("", dependencies=[AdminDep])
def list_tokens(
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> schemas.Page[schemas.Token]:
    page = store.list_tokens(limit=limit, cursor=cursor)
    return schemas.Page(items=[token_out(t) for t in page.items], next_cursor=page.next_cursor)


@router.delete("/{token_id}", dependencies=[AdminDep])
def revoke_token(token_id: str, store: StoreDep, request: Request) -> schemas.Token:
    record = store.revoke_token(token_id)
    auth: Authenticator = request.app.state.auth
    auth.forget()  # this replica stops accepting it at once; others within the cache time
    return token_out(record)
