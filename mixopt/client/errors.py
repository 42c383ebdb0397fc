"""The exceptions of the client: one class per error status, each with the server's problem."""

from __future__ import annotations

from http import HTTPStatus

import httpx
import pydantic

from mixopt import schemas

__all__ = [
    "AuthError",
    "ConflictError",
    "ForbiddenError",
    "MixoptAPIError",
    "NotFoundError",
    "PayloadTooLargeError",
    "ServerError",
    "ServiceUnavailableError",
    "UnauthorizedError",
    "ValidationError",
    "error_from_response",
]


class MixoptAPIError(Exception):
    """The server answered with an error status; ``problem`` is its RFC 9457 document."""

    def __init__(
        self, status: int, problem: schemas.Problem, response: httpx.Response | None = None
    ) -> None:
        super().__init__(f"{status} {problem.title}: {problem.detail}")
        self.status = status
        self.problem = problem
        self.response = response

    @property
    def detail(self) -> str:
        return self.problem.detail

    @property
    def errors(self) -> list[schemas.ProblemError]:
        return list(self.problem.errors or [])


class AuthError(MixoptAPIError):
    """401 (missing, invalid, expired or revoked token) or 403 (scope too narrow)."""


class UnauthorizedError(AuthError):
    """401: missing, invalid, expired or revoked token."""


class ForbiddenError(AuthError):
    """403: the token's scope does not allow the call."""


class NotFoundError(MixoptAPIError):
    """404: unknown id."""


class ConflictError(MixoptAPIError):
    """409: the request contradicts the stored state (lease not held, other metrics, archived)."""


class PayloadTooLargeError(MixoptAPIError):
    """413: the body is over the server's size limit."""


class ValidationError(MixoptAPIError):
    """422: the request breaks a validation rule; ``local`` when caught before sending."""

    def __init__(
        self,
        status: int,
        problem: schemas.Problem,
        response: httpx.Response | None = None,
        *,
        local: bool = False,
    ) -> None:
        super().__init__(status, problem, response)
        self.local = local


class ServerError(MixoptAPIError):
    """5xx."""


class ServiceUnavailableError(ServerError):
    """503 that outlasted the retries (database down or busy, or not ready)."""


_ERROR_CLASSES: dict[int, type[MixoptAPIError]] = {
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: ValidationError,
    503: ServiceUnavailableError,
}


def _error_class(status: int) -> type[MixoptAPIError]:
    if status in _ERROR_CLASSES:
        return _ERROR_CLASSES[status]
    return ServerError if status >= 500 else MixoptAPIError


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_from_response(response: httpx.Response) -> MixoptAPIError:
    """The exception for an error answer: its problem document, or one made from the body."""
    status = response.status_code
    problem: schemas.Problem | None = None
    try:
        problem = schemas.Problem.model_validate(response.json())
    except (ValueError, pydantic.ValidationError):
        problem = None
    if problem is None:  # a proxy's HTML page, an empty body...
        problem = schemas.Problem(
            title=_phrase(status), status=status, detail=response.text[:1000] or _phrase(status)
        )
    return _error_class(status)(status, problem, response)
