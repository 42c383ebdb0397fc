"""Bearer-token authentication with nested scopes: admin ⊇ write ⊇ read."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from mixopt.errors import Forbidden, Unauthorized
from service.store import Store, TokenRecord
from service.store.sql import hash_token, utcnow

__all__ = ["SCOPE_RANK", "Authenticator", "FailureThrottle", "Principal"]

SCOPE_RANK = {"read": 0, "write": 1, "admin": 2}


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's name and scope (``anonymous``/admin without auth)."""

    name: str
    scope: str
    token_id: str | None = None


class Authenticator:
    """Checks ``Authorization: Bearer`` headers against the store's token hashes.

    A lookup is cached for ``cache_seconds`` (keyed by the hash, never the secret) so a busy
    trainer polling weights costs no database round trip per request; a revocation takes
    effect within that time.
    """

    def __init__(
        self,
        store: Store,
        *,
        enabled: bool = True,
        cache_seconds: float = 5.0,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self.enabled = enabled
        # Told the reason of every refused call (missing, malformed, unknown, revoked, expired,
        # scope): the service counts them in /metrics, never the secret.
        self._on_failure = on_failure or (lambda _reason: None)
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, TokenRecord | None]] = {}
        self._lock = threading.Lock()

    def _cached(self, secret: str) -> tuple[bool, TokenRecord | None]:
        """(True, record) when the lookup of ``secret`` is cached and fresh."""
        with self._lock:
            hit = self._cache.get(hash_token(secret))
        if hit is not None and time.monotonic() - hit[0] < self._cache_seconds:
            return True, hit[1]
        return False, None

    def _lookup(self, secret: str) -> TokenRecord | None:
        found, record = self._cached(secret)
        if found:
            return record
        key = hash_token(secret)
        now = time.monotonic()
        record = self._store.find_token(secret)
        with self._lock:
            if len(self._cache) > 10_000:  # bound memory under a flood of bad tokens
                self._cache.clear()
            self._cache[key] = (now, record)
        return record

    def forget(self) -> None:
        with self._lock:
            self._cache.clear()

    def authenticate_cached(self, authorization: str | None, required: str) -> Principal | None:
        """``authenticate`` without touching the database: None when that would be needed.

        Cheap enough for the event loop, so a busy weights poll skips a thread hop.
        """
        if not self.enabled or not authorization:
            return self.authenticate(authorization, required)
        found, record = self._cached(self._secret_of(authorization))
        return self._admit(record, required) if found else None

    def authenticate(self, authorization: str | None, required: str) -> Principal:
        if not self.enabled:
            return Principal("anonymous", "admin")
        if not authorization:
            self._on_failure("missing")
            raise Unauthorized("missing Authorization: Bearer <token> header")
        return self._admit(self._lookup(self._secret_of(authorization)), required)

    def cached_principal(self, authorization: str | None, required: str) -> Principal | None:
        """The caller, when the token is cached and admitted; None for anything else (no or a
        malformed header, a refusal, a lookup to make), with no failure counted.

        For ``service.api.hot_paths``, which hands every None to the full route: that route
        then refuses, counts and throttles exactly as for any other call.
        """
        if not self.enabled:
            return Principal("anonymous", "admin")
        secret = _bearer_secret(authorization or "")
        if secret is None:
            return None
        found, record = self._cached(secret)
        if not found or record is None or _refusal(record, required) is not None:
            return None
        return Principal(record.name, record.scope, record.id)

    def _admit(self, record: TokenRecord | None, required: str) -> Principal:
        refusal = _refusal(record, required)
        if refusal is not None:
            self._on_failure(refusal[0])
            raise refusal[1]
        assert record is not None
        return Principal(record.name, record.scope, record.id)

    def _secret_of(self, authorization: str) -> str:
        secret = _bearer_secret(authorization)
        if secret is None:
            self._on_failure("malformed")
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        return secret


def _bearer_secret(authorization: str) -> str | None:
    """The secret of a ``Bearer <secret>`` header; None if it is not one."""
    kind, _, secret = authorization.partition(" ")
    secret = secret.strip()
    return secret if kind.lower() == "bearer" and secret else None


def _refusal(
    record: TokenRecord | None, required: str
) -> tuple[str, Unauthorized | Forbidden] | None:
    """Why the token ``record`` may not make a call needing ``required``: (reason, error)."""
    if record is None:
        return ("unknown", Unauthorized("unknown token"))
    if record.revoked_at is not None:
        return ("revoked", Unauthorized("the token has been revoked"))
    if record.expires_at is not None and record.expires_at <= utcnow():
        return ("expired", Unauthorized("the token has expired"))
    if SCOPE_RANK[record.scope] < SCOPE_RANK[required]:
        return (
            "scope",
            Forbidden(f"this call needs scope {required!r}; the token has {record.scope!r}"),
        )
    return None


class FailureThrottle:
    """Slows down a client that keeps failing authentication (a token being guessed).

    Past ``free`` failures within ``window`` seconds from one address, each further refusal is
    answered after a delay growing by ``step`` per failure, up to ``max_delay`` (``free == 0``:
    never). Good clients never wait, and the delay holds one request, not the server.
    """

    def __init__(
        self, *, free: int = 20, window: float = 60.0, step: float = 0.1, max_delay: float = 2.0
    ) -> None:
        self.free, self.window, self.step, self.max_delay = free, window, step, max_delay
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def failed(self, client: str, now: float | None = None) -> float:
        """Record a failure of ``client``; the delay its answer should wait (seconds)."""
        if self.free == 0:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            if len(self._failures) > 10_000:  # bound memory under a flood of addresses
                self._failures.clear()
            recent = [t for t in self._failures.get(client, []) if now - t < self.window]
            recent.append(now)
            self._failures[client] = recent[-(self.free + 100) :]
            excess = len(recent) - self.free
        return min(self.max_delay, self.step * excess) if excess > 0 else 0.0

    async def refused(self, client: str) -> None:
        """Record a refusal of ``client`` and hold its answer as long as ``failed`` says."""
        delay = self.failed(client)
        if delay:
            await asyncio.sleep(delay)
