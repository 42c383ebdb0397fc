"""No secret reaches the server's log, even at debug level: not the tokens used, not the ones
guessed, not one created through the API, not one typed into the dashboard's login form."""

from __future__ import annotations

import secrets as random_secrets
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import Tokens
from tests.servers import ServerProcess
from tests.service.conftest import experiment_body

API = "/api/v1"


def test_tokens_never_appear_in_the_server_log(
    database_url: str, tmp_path: Path, tokens: Tokens, http: Callable[..., httpx.Client]
) -> None:
    server = ServerProcess(database_url, tmp_path, "--log-level", "debug").start()
    guessed = f"guess-{random_secrets.token_urlsafe(16)}"
    try:
        admin = http(server.url, tokens.header("admin"), 30)
        assert admin.post(f"{API}/experiments", json=experiment_body()).status_code == 201
        created = admin.post(f"{API}/tokens", json={"name": "ci", "scope": "read"})
        assert created.status_code == 201, created.text
        new_secret = created.json()["token"]
        reader = http(server.url, {"Authorization": f"Bearer {new_secret}"}, 30)
        assert reader.get(f"{API}/experiments").status_code == 200
        guesser = http(server.url, {"Authorization": f"Bearer {guessed}"}, 30)
        assert guesser.get(f"{API}/experiments").status_code == 401
        with httpx.Client(base_url=server.url) as browser:
            form = browser.get("/login")
            csrf = form.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            signed_in = browser.post("/login", data={"token": tokens.write, "csrf": csrf})
            assert signed_in.status_code in (200, 303)
            assert browser.post("/login", data={"token": guessed, "csrf": csrf}).status_code == 401
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert "GET /api/v1/experiments" in log  # the log is there, at debug level
    for secret in (tokens.admin, tokens.write, tokens.read, new_secret, guessed):
        assert secret not in log
