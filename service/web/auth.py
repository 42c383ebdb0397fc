"""Dashboard sign-in: the API's bearer token, entered once and kept in a cookie.

The cookie holds the token itself (HttpOnly, SameSite=Strict, Secure over TLS), so a revoked or
expired token stops working in the browser exactly when it stops working for the API, and there
is no second credential to manage. Writes from pages are CSRF-safe twice over: SameSite=Strict
keeps the cookie off cross-site requests, and every form or script write carries the value of a
separate ``mixopt_csrf`` cookie (double submit), which another origin cannot read.
"""

from __future__ import annotations

import secrets

from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from mixopt.errors import Forbidden, Unauthorized
from service.auth import Authenticator, Principal

__all__ = [
    "CSRF_COOKIE",
    "CSRF_HEADER",
    "TOKEN_COOKIE",
    "LoginRequired",
    "check_csrf",
    "csrf_token",
    "principal_of",
    "set_session",
]

TOKEN_COOKIE = "mixopt_token"
CSRF_COOKIE = "mixopt_csrf"
CSRF_HEADER = "x-csrf-token"
COOKIE_DAYS = 30


class LoginRequired(Unauthorized):
    """A page asked without a usable token: the browser is sent to the login page."""


async def principal_of(request: Request, scope: str = "read") -> Principal:
    """Who is looking, from the session cookie; ``LoginRequired`` or ``Forbidden`` otherwise."""
    auth: Authenticator = request.app.state.auth
    if not auth.enabled:
        return await run_in_threadpool(auth.authenticate, None, scope)
    secret = request.cookies.get(TOKEN_COOKIE)
    if not secret:
        raise LoginRequired("sign in with an API token to see the dashboard")
    try:
        return await run_in_threadpool(auth.authenticate, f"Bearer {secret}", scope)
    except Forbidden:
        raise
    except Unauthorized as exc:
        raise LoginRequired(exc.detail) from None


def csrf_token(request: Request, response: Response | None = None) -> str:
    """The browser's CSRF value, set on ``response`` when it has none yet."""
    value = request.cookies.get(CSRF_COOKIE) or getattr(request.state, "csrf", None)
    if not value:
        value = secrets.token_urlsafe(24)
        request.state.csrf = value
    if response is not None and request.cookies.get(CSRF_COOKIE) != value:
        _keep(request, response, CSRF_COOKIE, value)
    return value


def check_csrf(request: Request, submitted: str | None) -> None:
    expected = request.cookies.get(CSRF_COOKIE)
    if not expected or not submitted or not secrets.compare_digest(expected, submitted):
        raise Forbidden("the form is stale or came from another site: reload the page")


def set_session(request: Request, response: Response, token: str | None) -> None:
    """Keep ``token`` in the session cookie, or clear it (None)."""
    if token is None:
        response.delete_cookie(TOKEN_COOKIE, httponly=True, samesite="strict")
        return
    _keep(request, response, TOKEN_COOKIE, token)


def _keep(request: Request, response: Response, name: str, value: str) -> None:
    """Both cookies: HttpOnly (scripts read the CSRF value from the page, not the cookie),
    SameSite=Strict, and Secure when the page came over TLS."""
    response.set_cookie(
        name,
        value,
        max_age=COOKIE_DAYS * 86400,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
