"""Authentication and scopes (API.md, Conventions and Operations), on SQLite and on Postgres.

The scope each operation needs is derived here from the contract's rules, independently of how
the routes declare it, and checked for every operation the OpenAPI document lists.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from mixopt.settings import Settings
from service.auth import FailureThrottle
from service.main import API_PREFIX, create_app
from service.store import SqlStore
from service.store.sql import hash_token
from tests.conftest import Tokens
from tests.service.conftest import TestClient, experiment_body

API = API_PREFIX
ROOT = Path(__file__).resolve().parents[2]
SCOPES = ("read", "write", "admin")
RANK = {scope: rank for rank, scope in enumerate(SCOPES)}
PUBLIC_PATHS = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/"}
HTTP_METHODS = {"get", "post", "put", "patch", "delete"}


def required_scope(method: str, path: str) -> str | None:
    """The scope the contract requires for ``method path`` (None: public).

    read: every GET and POST /experiments/{id}/predict. admin: create, edit and archive
    experiments, manage tokens. write: everything else.
    """
    if path in PUBLIC_PATHS:
        return None
    assert path.startswith(API + "/"), f"{method} {path} is outside the API and not public"
    relative = path[len(API) :]
    if relative == "/tokens" or relative.startswith("/tokens/"):
        return "admin"
    # Moving experiments between stores (issue 14): an export holds the mixer state and the
    # stored models too, an import creates an experiment.
    if method == "GET" and re.fullmatch(r"/experiments/\{[^/]+\}/export", relative):
        return "admin"
    if method == "POST" and relative == "/experiments/import":
        return "admin"
    if method == "GET":
        return "read"
    if method == "POST" and re.fullmatch(r"/experiments/\{[^/]+\}/predict", relative):
        return "read"
    if method == "POST" and relative == "/experiments":
        return "admin"
    if method == "POST" and re.fullmatch(r"/experiments/\{[^/]+\}/archive", relative):
        return "admin"
    if method == "PATCH" and re.fullmatch(r"/experiments/\{[^/]+\}", relative):
        return "admin"  # renaming or changing the objective (issue 16), as creating it
    return "write"


@pytest.fixture
def secrets(store: SqlStore) -> Tokens:
    # Token 1 is a spare: the walk below revokes token "1" with DELETE /tokens/1.
    store.create_token("spare", "read", None)
    return Tokens(
        read=store.create_token("reader", "read", None)[1],
        write=store.create_token("writer", "write", None)[1],
        admin=store.create_token("admin", "admin", None)[1],
    )


@pytest.fixture
def anonymous(app: FastAPI) -> Iterator[TestClient]:
    """A client that sends no token unless told to."""
    with TestClient(app) as test_client:
        yield test_client


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    request = response.request
    assert response.status_code == status, (
        f"{request.method} {request.url} ({request.headers.get('authorization', 'no token')!r}): "
        f"expected {status}, got {response.status_code}: {response.text[:500]}"
    )
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    for key in ("type", "title", "detail"):
        assert isinstance(body[key], str), body
        assert body[key], body
    if status == 401:
        assert response.headers.get("www-authenticate", "").lower().startswith("bearer"), (
            response.headers
        )
    return body


def operations(app: FastAPI) -> list[tuple[str, str]]:
    return [
        (method.upper(), path)
        for path, item in app.openapi()["paths"].items()
        for method in item
        if method in HTTP_METHODS
    ]


def call(
    client: TestClient, method: str, path: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    url = re.sub(r"\{[^}]+\}", "1", path)
    body: dict[str, Any] | None = {} if method in ("POST", "PUT", "PATCH") else None
    return client.request(method, url, json=body, headers=headers)


# --- (a) every operation -----------------------------------------------------------------------


def test_every_operation_requires_the_contracts_scope(
    app: FastAPI, anonymous: TestClient, secrets: Tokens
) -> None:
    ops = operations(app)
    assert len(ops) >= 20, ops
    walked = 0
    for method, path in ops:
        scope = required_scope(method, path)
        if scope is None:
            response = call(anonymous, method, path)
            assert response.status_code == 200, f"public {method} {path}: {response.status_code}"
            continue
        walked += 1
        assert_problem(call(anonymous, method, path), 401)
        for garbage in ("Bearer mxo_" + "A" * 43, f"Basic {secrets.admin}"):
            assert_problem(call(anonymous, method, path, {"Authorization": garbage}), 401)
        for held in SCOPES:
            response = call(anonymous, method, path, secrets.header(held))
            if RANK[held] < RANK[scope]:
                body = assert_problem(response, 403)
                assert scope in body["detail"]
            else:
                assert response.status_code not in (401, 403, 500), (
                    f"{method} {path} with a {held} token (needs {scope}): "
                    f"{response.status_code} {response.text[:300]}"
                )
    assert walked >= 18


def test_malformed_authorization_headers_are_401(anonymous: TestClient, secrets: Tokens) -> None:
    for garbage in (
        "Bearer mxo_" + "A" * 43,
        "Bearer " + secrets.admin + "x",
        "Bearer ",
        "Bearer",
        "Basic dXNlcjpwYXNz",
        secrets.admin,  # the secret without the scheme
        f"Token {secrets.admin}",
        f"Bearer{secrets.admin}",
    ):
        headers = {"Authorization": garbage}
        assert_problem(anonymous.get(f"{API}/experiments", headers=headers), 401)
        assert_problem(anonymous.post(f"{API}/experiments", json={}, headers=headers), 401)


def test_openapi_marks_public_operations_and_bearer_auth(app: FastAPI) -> None:
    document = app.openapi()
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
    }
    assert document["security"] == [{"bearer": []}]
    for method, path in operations(app):
        operation = document["paths"][path][method.lower()]
        if required_scope(method, path) is None:
            assert operation.get("security") == [], f"{method} {path} is public"
        else:
            assert operation.get("security", [{"bearer": []}]) == [{"bearer": []}]
            assert {"401", "403"} <= set(operation["responses"]), f"{method} {path}"


def test_public_endpoints_need_no_token(anonymous: TestClient) -> None:
    for path in sorted(PUBLIC_PATHS):
        response = anonymous.get(path)
        assert response.status_code == 200, f"{path}: {response.status_code}"
    # A bad token on a public endpoint does not matter either.
    assert anonymous.get("/healthz", headers={"Authorization": "Bearer nope"}).status_code == 200


def test_auth_comes_before_body_validation(anonymous: TestClient, secrets: Tokens) -> None:
    """An anonymous or underprivileged caller learns nothing about its body: 401/403 first."""
    url = f"{API}/experiments/1/proposals"
    for body in (b"{bad", b"[1]", b'{"count": 0}'):
        headers = {"content-type": "application/json"}
        assert_problem(anonymous.post(url, content=body, headers=headers), 401)
        headers |= secrets.header("read")
        assert_problem(anonymous.post(url, content=body, headers=headers), 403)
    # With the scope, it is the body's turn.
    headers = {"content-type": "application/json", **secrets.header("write")}
    assert anonymous.post(url, content=b"{bad", headers=headers).status_code == 422


# --- (b) token lifecycle -----------------------------------------------------------------------


def test_expired_token_is_401(anonymous: TestClient, store: SqlStore) -> None:
    past = datetime.now(UTC) - timedelta(seconds=1)
    _, expired = store.create_token("old", "admin", past)
    headers = {"Authorization": f"Bearer {expired}"}
    body = assert_problem(anonymous.get(f"{API}/experiments", headers=headers), 401)
    assert "expired" in body["detail"]
    _, fresh = store.create_token("new", "read", datetime.now(UTC) + timedelta(hours=1))
    response = anonymous.get(f"{API}/experiments", headers={"Authorization": f"Bearer {fresh}"})
    assert response.status_code == 200


def test_revoked_token_is_401(anonymous: TestClient, secrets: Tokens) -> None:
    admin = secrets.header("admin")
    created = anonymous.post(f"{API}/tokens", json={"name": "ci", "scope": "write"}, headers=admin)
    assert created.status_code == 201, created.text
    token = created.json()
    headers = {"Authorization": f"Bearer {token['token']}"}
    assert anonymous.get(f"{API}/experiments", headers=headers).status_code == 200
    revoked = anonymous.delete(f"{API}/tokens/{token['id']}", headers=admin)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None
    assert "token" not in revoked.json()
    body = assert_problem(anonymous.get(f"{API}/experiments", headers=headers), 401)
    assert "revoked" in body["detail"]
    # Revoking again is harmless; the token stays revoked.
    again = anonymous.delete(f"{API}/tokens/{token['id']}", headers=admin)
    assert again.status_code == 200
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    assert_problem(anonymous.get(f"{API}/experiments", headers=headers), 401)


def test_tokens_api_shows_the_secret_once(anonymous: TestClient, secrets: Tokens) -> None:
    admin = secrets.header("admin")
    answer = anonymous.post(
        f"{API}/tokens",
        json={"name": "trainer", "scope": "read", "expires_in_days": 30},
        headers=admin,
    )
    assert answer.status_code == 201, answer.text
    created = answer.json()
    secret = created["token"]
    assert isinstance(secret, str)
    assert len(secret) >= 43  # >= 256 random bits in URL-safe base64
    assert created["scope"] == "read"
    assert created["name"] == "trainer"
    expires = datetime.fromisoformat(created["expires_at"])
    assert timedelta(days=29) < expires - datetime.now(UTC) <= timedelta(days=30)
    listing = anonymous.get(f"{API}/tokens", headers=admin)
    assert listing.status_code == 200
    text = listing.text
    for shown in (secret, secrets.read, secrets.write, secrets.admin):
        assert shown not in text
        assert hash_token(shown) not in text
    items = listing.json()["items"]
    assert {"spare", "reader", "writer", "admin", "trainer"} <= {t["name"] for t in items}
    for item in items:
        assert not {"token", "token_hash", "hash", "secret"} & set(item), item
    # The new token works, with its scope.
    headers = {"Authorization": f"Bearer {secret}"}
    assert anonymous.get(f"{API}/experiments", headers=headers).status_code == 200
    assert_problem(anonymous.get(f"{API}/tokens", headers=headers), 403)
    # Default scope is write; a bad scope or name is 422.
    default = anonymous.post(f"{API}/tokens", json={"name": "w"}, headers=admin)
    assert default.json()["scope"] == "write"
    for body in ({"name": "x", "scope": "root"}, {"name": "bad name"}, {}):
        assert_problem(anonymous.post(f"{API}/tokens", json=body, headers=admin), 422)


def test_scopes_nest(anonymous: TestClient, secrets: Tokens) -> None:
    admin, write, read = (secrets.header(s) for s in ("admin", "write", "read"))
    created = anonymous.post(f"{API}/experiments", json=experiment_body(), headers=admin)
    assert created.status_code == 201, created.text
    eid = created.json()["id"]
    for headers in (admin, write, read):
        assert anonymous.get(f"{API}/experiments/{eid}", headers=headers).status_code == 200
        assert anonymous.get(f"{API}/experiments/{eid}/runs", headers=headers).status_code == 200
    for headers in (admin, write):
        response = anonymous.post(
            f"{API}/experiments/{eid}/proposals", json={"count": 1}, headers=headers
        )
        assert response.status_code == 201, response.text
    assert_problem(
        anonymous.post(f"{API}/experiments/{eid}/proposals", json={"count": 1}, headers=read), 403
    )
    for headers in (write, read):
        assert_problem(
            anonymous.post(f"{API}/experiments", json=experiment_body(name="x"), headers=headers),
            403,
        )
        assert_problem(anonymous.post(f"{API}/experiments/{eid}/archive", headers=headers), 403)
        assert_problem(anonymous.get(f"{API}/tokens", headers=headers), 403)
    # The scheme is case-insensitive (RFC 9110).
    lower = {"Authorization": f"bearer {secrets.read}"}
    assert anonymous.get(f"{API}/experiments", headers=lower).status_code == 200
    # Nothing the forbidden calls tried was done.
    runs = anonymous.get(f"{API}/experiments/{eid}/runs", headers=read).json()["items"]
    assert len(runs) == 2
    assert anonymous.get(f"{API}/experiments/{eid}", headers=read).json()["status"] == "active"


# --- (c), (d) the command line -----------------------------------------------------------------


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MIXOPT_DATABASE_URL", None)
    env.pop("MIXOPT_NO_AUTH", None)
    return subprocess.run(
        [sys.executable, "-m", "mixopt.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
        check=False,
    )


def test_cli_token_create_prints_a_working_write_token(
    anonymous: TestClient, database_url: str, store: SqlStore
) -> None:
    result = run_cli(
        "token", "create", "--scope", "write", "--name", "ci", "--database-url", database_url
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    secret = lines[-1]
    assert secret == secret.strip()
    assert " " not in secret
    assert len(secret) >= 43
    record = store.find_token(secret)
    assert record is not None
    assert (record.name, record.scope) == ("ci", "write")
    headers = {"Authorization": f"Bearer {secret}"}
    assert anonymous.get(f"{API}/experiments", headers=headers).status_code == 200
    # A write call gets past auth (404: there is no experiment 1), an admin call does not.
    response = anonymous.post(f"{API}/experiments/1/proposals", json={"count": 1}, headers=headers)
    assert response.status_code == 404, response.text
    assert_problem(
        anonymous.post(f"{API}/experiments", json=experiment_body(), headers=headers), 403
    )


def test_serve_no_auth_refuses_a_non_loopback_host(tmp_path: Path) -> None:
    database = tmp_path / "never.db"
    result = run_cli(
        "serve",
        "--no-auth",
        "--host",
        "0.0.0.0",
        "--port",
        "0",
        "--database-url",
        f"sqlite:///{database}",
        timeout=30,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    # It names loopback: the word, or the loopback address to bind to instead.
    assert "loopback" in output.lower() or "127.0.0.1" in output, output
    assert "0.0.0.0" in output
    # It did not start: no server banner, and the database was never opened.
    assert "Uvicorn running" not in output
    assert not database.exists()


def test_refused_calls_are_counted_by_reason_in_metrics(
    app: FastAPI, tokens: Tokens, client: TestClient
) -> None:
    with TestClient(app) as anonymous:
        anonymous.get(f"{API}/experiments")
        anonymous.get(f"{API}/experiments", headers={"Authorization": "Basic abc"})
        anonymous.get(f"{API}/experiments", headers={"Authorization": "Bearer not-a-token"})
        anonymous.post(f"{API}/experiments", json=experiment_body(), headers=tokens.header("read"))
        text = anonymous.get("/metrics").text
    for reason in ("missing", "malformed", "unknown", "scope"):
        assert f'mixopt_auth_failures_total{{reason="{reason}"}} 1.0' in text, reason
    assert "not-a-token" not in text


def test_cors_is_closed_by_default_and_open_to_the_configured_origins(store: SqlStore) -> None:
    preflight = {
        "Origin": "https://notebook.example",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    with TestClient(create_app(Settings(token_cache_seconds=0), store)) as closed:
        answer = closed.options(f"{API}/experiments", headers=preflight)
        assert "access-control-allow-origin" not in answer.headers
    settings = Settings(token_cache_seconds=0, cors_origins=["https://notebook.example"])
    with TestClient(create_app(settings, store)) as open_:
        answer = open_.options(f"{API}/experiments", headers=preflight)
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == "https://notebook.example"
        other = open_.options(
            f"{API}/experiments", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers


def test_a_client_that_keeps_failing_is_slowed_and_a_good_token_never_is(store: SqlStore) -> None:
    throttle = FailureThrottle(free=3, window=60, step=0.1, max_delay=0.25)
    delays = [throttle.failed("10.0.0.9", now=float(t)) for t in range(6)]
    assert delays[:3] == [0, 0, 0]
    assert delays[3:] == pytest.approx([0.1, 0.2, 0.25])
    assert throttle.failed("10.0.0.8", now=6.0) == 0  # another address
    assert throttle.failed("10.0.0.9", now=200.0) == 0  # the window has passed
    assert FailureThrottle(free=0).failed("x") == 0
    app = create_app(Settings(token_cache_seconds=0, auth_free_failures=2), store)
    _, secret = store.create_token("good", "read", None)
    with TestClient(app) as guesser:
        for _ in range(2):
            assert guesser.get(f"{API}/experiments").status_code == 401
        started = time.monotonic()
        assert guesser.get(f"{API}/experiments").status_code == 401
        assert time.monotonic() - started >= 0.09
        started = time.monotonic()
        ok = guesser.get(f"{API}/experiments", headers={"Authorization": f"Bearer {secret}"})
        assert ok.status_code == 200 and time.monotonic() - started < 0.09
