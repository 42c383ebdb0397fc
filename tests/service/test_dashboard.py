"""The dashboard's pages over HTTP (no browser): sign-in, scopes, CSRF, every page's content.

The browser tests (``tests/e2e/test_dashboard_browser.py``) check that the same pages render
their charts in Chromium; these check what the server sends, on SQLite and Postgres.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import plotly
import pytest
from fastapi import FastAPI

from mixopt.settings import Settings
from service.api.routes.dashboard import chart_json
from service.main import create_app
from service.store import SqlStore
from tests.conftest import Tokens
from tests.service.conftest import TestClient, experiment_body

API = "/api/v1"
DOMAINS = ["web", "code", "papers"]


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf-token" content="([^"]+)"', page) or re.search(
        r'name="csrf" value="([^"]+)"', page
    )
    assert found, "the page carries no CSRF value"
    return found.group(1)


def sign_in(app: FastAPI, token: str) -> TestClient:
    browser = TestClient(app)
    form = browser.get("/login")
    assert form.status_code == 200
    answer = browser.post(
        "/login",
        data={"token": token, "csrf": _csrf(form.text), "next": "/"},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    return browser


def figures(page: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="figures">(.*?)</script>', page, re.S)
    assert found, "the page embeds no figures"
    data: dict[str, Any] = json.loads(found.group(1))
    return data


def loss(weights: dict[str, float]) -> float:
    return 3.0 - 0.8 * weights["web"] - 0.3 * weights["code"] + 0.9 * weights["web"] ** 2


@pytest.fixture
def swarm(client: TestClient) -> dict[str, Any]:
    """An offline experiment with 24 completed runs and one failed run."""
    experiment = client.post(f"{API}/experiments", json=experiment_body(name="swarm")).json()
    rng = np.random.default_rng(0)
    runs = []
    for i, mixture in enumerate(rng.dirichlet(np.ones(3), size=24)):
        weights = dict(zip(DOMAINS, (round(float(w), 6) for w in mixture), strict=True))
        weights["web"] = round(1 - weights["code"] - weights["papers"], 6)
        response = client.post(
            f"{API}/experiments/{experiment['id']}/runs",
            json={
                "weights": weights,
                "metrics": {"val_loss/web": loss(weights)},
                "external_id": f"r{i}",
            },
        )
        assert response.status_code == 201, response.text
        runs.append(response.json())
    failed = client.post(
        f"{API}/experiments/{experiment['id']}/runs",
        json={"weights": {"web": 0.5, "code": 0.25, "papers": 0.25}, "status": "failed"},
    )
    assert failed.status_code == 201, failed.text
    return {"experiment": experiment, "runs": runs}


def test_pages_send_a_browser_without_a_session_to_the_login_page(app: FastAPI) -> None:
    with TestClient(app) as anonymous:
        answer = anonymous.get("/experiments/1?sort=objective", follow_redirects=False)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/login?next=/experiments/1%3Fsort%3Dobjective"
        page = anonymous.get("/")
        assert page.status_code == 200
        assert 'id="login"' in page.text


def test_login_keeps_the_token_in_a_strict_http_only_cookie(app: FastAPI, tokens: Tokens):
    browser = TestClient(app)
    form = browser.get("/login?next=/experiments/1")
    answer = browser.post(
        "/login",
        data={"token": tokens.read, "csrf": _csrf(form.text), "next": "/experiments/1"},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == "/experiments/1"
    cookie = next(c for c in answer.headers.get_list("set-cookie") if "mixopt_token=" in c)
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    assert "Secure" not in cookie  # plain HTTP here; over TLS it is set
    listing = browser.get("/")
    assert listing.status_code == 200
    assert "reader" in listing.text and "Sign out" in listing.text
    # Sign out clears the session.
    out = browser.post("/logout", data={"csrf": _csrf(listing.text)}, follow_redirects=False)
    assert out.status_code == 303
    assert browser.get("/", follow_redirects=False).status_code == 303


def test_login_refuses_a_bad_token_and_a_form_without_its_csrf_value(app: FastAPI, tokens):
    browser = TestClient(app)
    form = browser.get("/login")
    bad = browser.post("/login", data={"token": "nope", "csrf": _csrf(form.text)})
    assert bad.status_code == 401
    assert "unknown token" in bad.text
    forged = browser.post("/login", data={"token": tokens.admin, "csrf": "forged"})
    assert forged.status_code == 403
    assert "mixopt_token" not in forged.headers.get("set-cookie", "")


def test_login_never_redirects_off_the_site(app: FastAPI, tokens: Tokens) -> None:
    browser = TestClient(app)
    form = browser.get("/login")
    for target in ("https://evil.example/", "//evil.example/x", "javascript:alert(1)"):
        answer = browser.post(
            "/login",
            data={"token": tokens.read, "csrf": _csrf(form.text), "next": target},
            follow_redirects=False,
        )
        assert answer.headers["location"] == "/"


def test_the_experiments_list_counts_runs_and_shows_the_best_objective(
    app: FastAPI, client: TestClient, tokens: Tokens, swarm: dict[str, Any]
) -> None:
    client.post(f"{API}/experiments", json=experiment_body(name="other-offline"))
    online = client.post(
        f"{API}/experiments",
        json=experiment_body(name="live-mix", mode="online", method="stratified", objective=None),
    )
    assert online.status_code == 201, online.text
    browser = sign_in(app, tokens.read)
    page = browser.get("/").text
    row = re.search(rf'<tr data-experiment-id="{swarm["experiment"]["id"]}".*?</tr>', page, re.S)
    assert row
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(0), re.S)
    assert cells[4:8] == ["0", "0", "24", "1"]  # pending, running, completed, failed
    best = min(loss(r["weights"]) for r in swarm["runs"])
    assert cells[8] == f"{best:.4f}"
    assert "live-mix" in page and "other-offline" in page
    only_online = browser.get("/?mode=online").text
    assert "live-mix" in only_online and "swarm" not in only_online
    searched = browser.get("/?q=SWA").text
    assert "swarm" in searched and "other-offline" not in searched
    with_failures = browser.get("/?runs=failed").text
    assert "swarm" in with_failures and "other-offline" not in with_failures


def test_archived_experiments_are_hidden_unless_asked_for(
    app: FastAPI, client: TestClient, tokens: Tokens
) -> None:
    old = client.post(f"{API}/experiments", json=experiment_body(name="old-one")).json()
    client.post(f"{API}/experiments/{old['id']}/archive")
    browser = sign_in(app, tokens.read)
    assert "old-one" not in browser.get("/").text
    assert "old-one" in browser.get("/?archived=true").text


def test_the_offline_page_shows_the_fit_its_charts_and_a_sorted_paged_runs_table(
    app: FastAPI, client: TestClient, tokens: Tokens, swarm: dict[str, Any]
) -> None:
    eid = swarm["experiment"]["id"]
    browser = sign_in(app, tokens.write)
    before = browser.get(f"/experiments/{eid}").text
    assert "No fit yet" in before
    assert set(figures(before)) == {"parallel", "best"}
    fit = browser.post(
        f"/ui/experiments/{eid}/fits",
        json={"model": "linear"},
        headers={"X-CSRF-Token": _csrf(before)},
    )
    assert fit.status_code == 200, fit.text
    page = browser.get(f"/experiments/{eid}").text
    charts = figures(page)
    assert {"parallel", "best", "oof", "importance", "recommendation"} <= set(charts)
    assert len(charts["oof"]["data"][-1]["x"]) == 24
    assert [d["label"] for d in charts["parallel"]["data"][0]["dimensions"]][:3] == DOMAINS
    # Each domain keeps its colour from chart to chart.
    bars = charts["recommendation"]["data"][0]
    colours = dict(zip(bars["x"], bars["marker"]["color"], strict=True))
    importance = charts["importance"]["data"][0]
    assert dict(zip(importance["y"], importance["marker"]["color"], strict=True)) == colours
    assert 'id="cv-spearman"' in page and 'id="fit-history"' in page
    assert 'id="whatif"' in page and page.count('type="range"') == 3
    # Sorted by objective, the best run is first; 25 runs fit one page of 50.
    ordered = browser.get(f"/experiments/{eid}?sort=objective&order=asc").text
    first = re.search(r'<tr data-run-id="(\d+)"', ordered)
    assert first
    best = min(swarm["runs"], key=lambda r: loss(r["weights"]))
    assert first.group(1) == best["id"]
    assert "page 1 of 1" in ordered
    assert browser.get(f"/experiments/{eid}?sort=nonsense").status_code == 422


def test_a_read_token_sees_no_actions_and_cannot_start_a_fit(
    app: FastAPI, tokens: Tokens, swarm: dict[str, Any]
) -> None:
    eid = swarm["experiment"]["id"]
    browser = sign_in(app, tokens.read)
    page = browser.get(f"/experiments/{eid}").text
    assert 'id="fit-form"' not in page
    refused = browser.post(
        f"/ui/experiments/{eid}/fits",
        json={"model": "linear"},
        headers={"X-CSRF-Token": _csrf(page)},
    )
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/problem+json")
    run_id = swarm["runs"][0]["id"]
    run_page = browser.get(f"/runs/{run_id}").text
    assert 'id="exclusion-form"' not in run_page
    excluded = browser.post(
        f"/runs/{run_id}/exclusion", data={"excluded": "true", "csrf": _csrf(run_page)}
    )
    assert excluded.status_code == 403


def test_a_fit_from_the_page_needs_its_csrf_header(
    app: FastAPI, tokens: Tokens, swarm: dict[str, Any]
) -> None:
    browser = sign_in(app, tokens.write)
    eid = swarm["experiment"]["id"]
    refused = browser.post(f"/ui/experiments/{eid}/fits", json={"model": "linear"})
    assert refused.status_code == 403
    assert browser.get(f"/api/v1/experiments/{eid}/fits").status_code == 401  # no bearer


def test_what_if_predicts_with_the_stored_fit_and_names_a_bad_mixture(
    app: FastAPI, client: TestClient, tokens: Tokens, swarm: dict[str, Any]
) -> None:
    eid = swarm["experiment"]["id"]
    assert client.post(f"{API}/experiments/{eid}/fit", json={"model": "linear"}).status_code == 200
    browser = sign_in(app, tokens.read)
    csrf = _csrf(browser.get(f"/experiments/{eid}").text)
    mixture = {"web": 0.5, "code": 0.3, "papers": 0.2}
    answer = browser.post(
        f"/ui/experiments/{eid}/predict",
        json={"mixtures": [{"weights": mixture}]},
        headers={"X-CSRF-Token": csrf},
    )
    assert answer.status_code == 200, answer.text
    ours = answer.json()["items"][0]
    api = client.post(f"{API}/experiments/{eid}/predict", json={"mixtures": [{"weights": mixture}]})
    assert ours == api.json()["items"][0]
    assert ours["low"] <= ours["value"] <= ours["high"]
    bad = browser.post(
        f"/ui/experiments/{eid}/predict",
        json={"mixtures": [{"weights": {"web": 1.0, "moon": 0.5}}]},
        headers={"X-CSRF-Token": csrf},
    )
    assert bad.status_code == 422
    assert bad.json()["errors"]


def test_the_run_page_shows_a_long_curve_downsampled_and_excluding_works(
    app: FastAPI, client: TestClient, tokens: Tokens, swarm: dict[str, Any]
) -> None:
    eid = swarm["experiment"]["id"]
    client.post(f"{API}/experiments/{eid}/proposals", json={"count": 1})
    claimed = client.post(f"{API}/experiments/{eid}/claim", json={"worker": "w1"}).json()
    steps = np.arange(5000)
    for start in range(0, 5000, 2500):
        points = [
            {"name": "train_loss", "step": int(s), "value": float(4 / np.sqrt(s + 1))}
            for s in steps[start : start + 2500]
        ]
        assert (
            client.post(f"{API}/runs/{claimed['id']}/metrics", json={"points": points}).status_code
            == 202
        )
    client.post(
        f"{API}/runs/{claimed['id']}/fail", json={"reason": "CUDA out of memory", "worker": "w1"}
    )
    browser = sign_in(app, tokens.write)
    page = browser.get(f"/runs/{claimed['id']}").text
    curve = figures(page)["losses"]["data"]
    line = next(trace for trace in curve if trace["name"] == "train_loss")
    assert 100 < len(line["x"]) <= 400  # downsampled on the server
    assert line["x"][-1] == 4999
    assert "CUDA out of memory" in page and "downsampled" in page
    run_id = swarm["runs"][0]["id"]
    run_page = browser.get(f"/runs/{run_id}").text
    done = browser.post(
        f"/runs/{run_id}/exclusion",
        data={"excluded": "true", "reason": "bad node", "csrf": _csrf(run_page)},
        follow_redirects=False,
    )
    assert done.status_code == 303
    stored = client.get(f"{API}/runs/{run_id}").json()
    assert stored["excluded"] is True and stored["reason"] == "bad node"


def test_the_online_run_page_charts_weights_and_losses_and_answers_304_when_unchanged(
    app: FastAPI, client: TestClient, tokens: Tokens
) -> None:
    experiment = client.post(
        f"{API}/experiments",
        json=experiment_body(name="live", mode="online", method="stratified", objective=None),
    ).json()
    run = client.post(
        f"{API}/experiments/{experiment['id']}/runs", json={"name": "main", "total_steps": 1000}
    ).json()
    for i in range(1, 6):
        weights = client.get(f"{API}/runs/{run['id']}/weights").json()
        answer = client.post(
            f"{API}/runs/{run['id']}/feedback",
            json={
                "step": 100 * i,
                "version": weights["version"],
                "train_losses": dict.fromkeys(DOMAINS, 3.0 - 0.1 * i),
                "eval_losses": dict.fromkeys(DOMAINS, 3.1 - 0.1 * i),
            },
        )
        assert answer.status_code == 200, answer.text
    browser = sign_in(app, tokens.read)
    page = browser.get(f"/runs/{run['id']}").text
    charts = figures(page)
    assert [t["name"] for t in charts["weights"]["data"]] == DOMAINS
    assert all(t["stackgroup"] == "weights" for t in charts["weights"]["data"])
    assert charts["train"]["data"][0]["x"] == [100, 200, 300, 400, 500]
    assert len(charts["eval"]["data"]) == 3
    assert 'data-active="true"' in page
    first = browser.get(f"/ui/runs/{run['id']}/online")
    assert first.status_code == 200
    etag = first.headers["etag"]
    assert (
        browser.get(f"/ui/runs/{run['id']}/online", headers={"If-None-Match": etag}).status_code
        == 304
    )
    weights = client.get(f"{API}/runs/{run['id']}/weights").json()
    client.post(
        f"{API}/runs/{run['id']}/feedback",
        json={"step": 600, "version": weights["version"], "train_losses": {"web": 2.0}},
    )
    changed = browser.get(f"/ui/runs/{run['id']}/online", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.json()["feedback_rounds"] == 6
    online_page = browser.get(f"/experiments/{experiment['id']}").text
    assert f'data-run-id="{run["id"]}"' in online_page
    assert "<td>main</td>" in online_page  # the run's name


def test_free_text_is_escaped_in_pages_and_inside_the_chart_data(
    app: FastAPI, client: TestClient, tokens: Tokens, swarm: dict[str, Any]
) -> None:
    nasty = "x</script><script>alert(1)</script>"
    eid = swarm["experiment"]["id"]
    imported = client.post(
        f"{API}/experiments/{eid}/runs",
        json={"weights": {"web": 0.4, "code": 0.3, "papers": 0.3}, "tags": {"note": nasty}},
    ).json()
    client.post(f"{API}/runs/{imported['id']}/exclude", json={"reason": nasty})
    browser = sign_in(app, tokens.read)
    page = browser.get(f"/runs/{imported['id']}").text
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;" in page
    embedded = chart_json({"title": nasty, "quote": "it's"})
    assert "<" not in embedded and "'" not in embedded
    assert json.loads(embedded) == {"title": nasty, "quote": "it's"}


def test_unknown_ids_get_an_html_404_page(app: FastAPI, tokens: Tokens) -> None:
    browser = sign_in(app, tokens.read)
    for path in ("/experiments/424242", "/runs/424242", "/experiments/not-a-number"):
        answer = browser.get(path)
        assert answer.status_code == 404, path
        assert answer.headers["content-type"].startswith("text/html")


def test_plotly_is_served_from_the_installed_package(app: FastAPI) -> None:
    with TestClient(app) as anonymous:
        script = anonymous.get(f"/static/plotly-{plotly.__version__}.min.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        assert "immutable" in script.headers["cache-control"]
        assert len(script.content) > 1_000_000
        assert anonymous.get("/static/plotly-0.0.1.min.js").status_code == 404
        assert anonymous.get("/static/dashboard.js").status_code == 200
        assert anonymous.get("/static/../main.py").status_code == 404


def test_without_auth_on_loopback_the_dashboard_is_open(store: SqlStore) -> None:
    app = create_app(Settings(no_auth=True, token_cache_seconds=0), store)
    with TestClient(app) as anyone:
        page = anyone.get("/", follow_redirects=False)
        assert page.status_code == 200
        assert "open (no auth)" in page.text
        assert anyone.get("/login", follow_redirects=False).status_code == 303
