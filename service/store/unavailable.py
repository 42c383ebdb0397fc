"""Which database errors mean "unavailable for now, retry" rather than "a bug in mixopt".

The API answers the first kind with 503 and ``Retry-After`` (the client retries; nothing was
written, since every store method is one transaction); everything else stays a 500 that is
logged with its stack. The line matters: calling every ``OperationalError`` transient would hide
real bugs, since SQLite reports a syntax error or a missing table as one, and Postgres reports
"index row size exceeds maximum" (no retry will fix it) as one too.
"""

from __future__ import annotations

import sqlite3

import psycopg
from sqlalchemy import exc as sa

__all__ = ["database_unavailable", "describe"]

# SQLSTATE classes (and codes) of Postgres errors that a later retry can get past: the
# connection failed (08), the transaction lost a serialization or deadlock race (40), the server
# lacks resources (53: too many connections, disk full, out of memory), an operator or a crash
# stopped it or a statement timed out (57), its I/O failed (58), a lock wait timed out (55P03).
_PG_TRANSIENT_CLASSES = frozenset({"08", "40", "53", "57", "58"})
_PG_TRANSIENT_CODES = frozenset({"55P03"})

# SQLite primary result codes worth a retry: busy or locked past the busy timeout, out of memory,
# an I/O error, a full disk, a file that cannot be opened (a volume gone), a WAL lock race.
# SQLITE_ERROR (1), which is also a syntax error or "no such table", is not among them.
_SQLITE_TRANSIENT = frozenset({5, 6, 7, 10, 13, 14, 15})


def database_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` says the database cannot serve now but may soon (answer 503)."""
    if isinstance(exc, sa.TimeoutError | sa.DisconnectionError):
        return True  # the pool waited in vain for a connection, or a ping found it dead
    if isinstance(exc, sa.DBAPIError):
        if exc.connection_invalidated:  # SQLAlchemy recognised a disconnect mid-statement
            return True
        return _driver_error_unavailable(exc.orig)
    return _driver_error_unavailable(exc)


def _driver_error_unavailable(exc: BaseException | None) -> bool:
    if isinstance(exc, psycopg.Error):
        if exc.sqlstate is None:
            # Raised by the client library itself: refused, reset, the server closed the
            # connection, or a connection already known to be broken.
            return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
        return exc.sqlstate[:2] in _PG_TRANSIENT_CLASSES or exc.sqlstate in _PG_TRANSIENT_CODES
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in _SQLITE_TRANSIENT
    return False


def describe(exc: BaseException) -> str:
    """A one-line account for the log: the driver's message without SQLAlchemy's statement and
    parameters (which may hold a token's hash or a client's data)."""
    cause = exc.orig if isinstance(exc, sa.DBAPIError) and exc.orig is not None else exc
    first = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {first[0] if first else ''}"
