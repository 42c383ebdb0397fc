"""Domain errors shared by the mixers, the store and the service.

Only ``service/problems.py`` turns these into HTTP responses; everything below the routes raises
them with the field at fault so that the problem document can name it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Conflict",
    "ErrorItem",
    "Forbidden",
    "Gone",
    "InvalidInput",
    "InvalidMixture",
    "LeaseLost",
    "MixoptError",
    "NotFound",
    "Unauthorized",
]

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class ErrorItem:
    """One validation failure: where it is (a path into the request) and what is wrong."""

    loc: Loc
    msg: str


class MixoptError(Exception):
    """Base class of the errors a user can cause; each subclass maps to one HTTP status."""

    title = "Error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(MixoptError):
    title = "Not found"


class Conflict(MixoptError):
    """The request is well formed but contradicts the stored state (409)."""

    title = "Conflict"


class LeaseLost(Conflict):
    """The worker does not hold the lease of the run it is acting on."""

    title = "Lease not held"


class Gone(Conflict):
    """Archived experiments refuse new work."""

    title = "Experiment archived"


class InvalidInput(MixoptError):
    """The request breaks a validation rule of the contract (422)."""

    title = "Validation failed"

    def __init__(self, detail: str, errors: Sequence[ErrorItem] = ()) -> None:
        super().__init__(detail)
        self.errors: list[ErrorItem] = list(errors)

    @classmethod
    def at(cls, loc: Loc, msg: str) -> InvalidInput:
        return cls(msg, [ErrorItem(loc, msg)])

    def prefixed(self, *prefix: str | int) -> InvalidInput:
        """The same error with every location moved under ``prefix`` (e.g. ``body``)."""
        return type(self)(self.detail, [ErrorItem((*prefix, *e.loc), e.msg) for e in self.errors])


class InvalidMixture(InvalidInput):
    """Weights that are not a valid mixture over the experiment's domains."""

    title = "Invalid mixture"


class Unauthorized(MixoptError):
    """Missing, unknown, expired or revoked token (401)."""

    title = "Unauthorized"


class Forbidden(MixoptError):
    """The token's scope does not allow the call (403)."""

    title = "Forbidden"
