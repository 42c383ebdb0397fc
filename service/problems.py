"""The one place where errors become RFC 9457 problem documents (``application/problem+json``).

Every error answer has ``type``, ``title``, ``status`` (equal to the HTTP status) and ``detail``;
validation errors add ``errors: [{loc, msg}]`` naming the field at fault.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from mixopt.errors import (
    Conflict,
    ErrorItem,
    Forbidden,
    InvalidInput,
    MixoptError,
    NotFound,
    Unauthorized,
)
from service.store.unavailable import database_unavailable, describe

__all__ = [
    "PROBLEM_RESPONSES",
    "RETRY_AFTER_SECONDS",
    "install_problem_handlers",
    "problem_response",
    "problem_status",
    "unavailable_response",
]

log = logging.getLogger("mixopt.service")

MEDIA_TYPE = "application/problem+json"

RETRY_AFTER_SECONDS = 2
"""What a 503 tells the client to wait: long enough for a pool to reconnect, short enough that
a trainer loses little time once the database is back."""

_STATUS: list[tuple[type[MixoptError], int, str]] = [
    (Unauthorized, 401, "unauthorized"),
    (Forbidden, 403, "forbidden"),
    (NotFound, 404, "not-found"),
    (Conflict, 409, "conflict"),
    (InvalidInput, 422, "validation"),
]


def problem_type(slug: str) -> str:
    return f"tag:mixopt.dev,2026:problem/{slug}"


def problem_response(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    slug: str | None = None,
    errors: Sequence[ErrorItem] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": problem_type(slug) if slug else "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = [{"loc": list(e.loc), "msg": e.msg} for e in errors]
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def problem_status(exc: MixoptError) -> int:
    """The HTTP status of a user's error."""
    return next((status for cls, status, _slug in _STATUS if isinstance(exc, cls)), 400)


def _domain_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MixoptError)
    for cls, status, slug in _STATUS:
        if isinstance(exc, cls):
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            errors = exc.errors if isinstance(exc, InvalidInput) else None
            return problem_response(
                status, exc.detail, title=exc.title, slug=slug, errors=errors, headers=headers
            )
    return problem_response(400, exc.detail, title=exc.title)


def _loc_text(loc: Sequence[Any]) -> str:
    return ".".join(str(part) for part in loc)


def _json_error_item(error: dict[str, Any], document: Any) -> ErrorItem:
    """FastAPI's "JSON decode error" at a character offset, as the line and column at fault."""
    loc = tuple(error.get("loc", ()))
    offset = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else None
    reason = str((error.get("ctx") or {}).get("error") or error.get("msg", ""))
    if offset is None or not isinstance(document, str | bytes):
        return ErrorItem(("body",), f"invalid JSON: {reason}")
    text = document.decode("utf-8", "replace") if isinstance(document, bytes) else document
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return ErrorItem(("body",), f"invalid JSON: {reason} at line {line} column {column}")


def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    items = [
        _json_error_item(e, exc.body)
        if e.get("type") == "json_invalid"
        else ErrorItem(tuple(e.get("loc", ())), str(e.get("msg", "")))
        for e in exc.errors()
    ]
    if items:
        first = items[0]
        more = f" (and {len(items) - 1} more)" if len(items) > 1 else ""
        detail = f"{_loc_text(first.loc)}: {first.msg}{more}"
    else:
        detail = "the request is invalid"
    return problem_response(422, detail, title="Validation failed", slug="validation", errors=items)


def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError):
        # FastAPI answers 400 when json.loads fails with something other than JSONDecodeError:
        # invalid UTF-8, nesting too deep, an integer too long to parse. All are malformed JSON,
        # which the contract answers with 422 like any other.
        msg = f"the body is not valid JSON: {type(exc.__cause__).__name__}: {exc.__cause__}"
        return problem_response(
            422,
            msg,
            title="Validation failed",
            slug="validation",
            errors=[ErrorItem(("body",), msg)],
        )
    return problem_response(
        exc.status_code,
        str(exc.detail) if exc.detail else HTTPStatus(exc.status_code).phrase,
        headers=dict(exc.headers) if exc.headers else None,
    )


def unavailable_response(detail: str, *, slug: str = "unavailable") -> JSONResponse:
    """503 with ``Retry-After``: the database is down or busy; retrying is safe."""
    return problem_response(
        503, detail, slug=slug, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
    )


def _database_error(_request: Request, exc: Exception) -> JSONResponse:
    if not database_unavailable(exc):
        # A bug (a constraint, a syntax error, a missing table): the 500 handler logs it with
        # its stack, and tests see it raised.
        raise exc
    # The detail names no host, statement or driver message: they are for the log.
    log.warning("database unavailable: %s", describe(exc))
    return unavailable_response("the database is unavailable or busy; retry shortly")


def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return problem_response(500, "an internal error occurred; it has been logged")


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(MixoptError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(SQLAlchemyError, _database_error)
    app.add_exception_handler(Exception, _unexpected)


def _problem_doc(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _problem_doc("missing, invalid, expired or revoked token"),
    403: _problem_doc("the token's scope does not allow this call"),
    404: _problem_doc("unknown id"),
    409: _problem_doc("conflicts with the stored state"),
    413: _problem_doc("request body over the size limit"),
    422: _problem_doc("the request breaks a validation rule"),
    503: _problem_doc("the database is unavailable or busy; retry after Retry-After seconds"),
}
