"""A method is one module: the example methods (tests/example_methods.py), registered, are
served end to end by the service, which knows no method by name."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.example_methods import registered
from tests.service.conftest import DOMAINS

API = "/api/v1"
NAMES = [d["name"] for d in DOMAINS]


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with registered(monkeypatch):
        yield


def loss(weights: dict[str, float]) -> float:
    return 3.0 - 0.5 * weights["code"] + 0.2 * weights["papers"]


def test_a_registered_offline_method_is_listed_proposed_fitted_and_recommended(
    client: TestClient, plugins: None
) -> None:
    listed = client.get(f"{API}/methods").json()["items"]
    assert {"name": "uniform", "mode": "offline"}.items() <= next(
        m for m in listed if m["name"] == "uniform"
    ).items()
    created = client.post(
        f"{API}/experiments",
        json={
            "name": "plugin-offline",
            "method": "uniform",
            "domains": DOMAINS,
            "objective": {"metrics": {"loss": 1.0}},
        },
    )
    assert created.status_code == 201, created.text
    eid = created.json()["id"]
    assert isinstance(created.json()["config"]["seed"], int)  # completed at creation
    runs = client.post(f"{API}/experiments/{eid}/proposals", json={"count": 16}).json()["items"]
    assert len(runs) == 16
    for run in runs:
        done = client.post(
            f"{API}/runs/{run['id']}/complete", json={"metrics": {"loss": loss(run["weights"])}}
        )
        assert done.status_code == 200, done.text
    fit = client.post(f"{API}/experiments/{eid}/fit", json={"model": "linear"})
    assert fit.status_code == 200, fit.text
    assert fit.json()["cv"]["spearman"] > 0.9
    rec = client.get(f"{API}/experiments/{eid}/recommendation").json()
    assert set(rec["weights"]) == set(NAMES)
    assert rec["weights"]["code"] == max(rec["weights"].values())  # the domain that helps
    predicted = client.post(
        f"{API}/experiments/{eid}/predict", json={"mixtures": [{"weights": rec["weights"]}]}
    )
    assert predicted.status_code == 200, predicted.text
    assert predicted.json()["items"][0]["value"] == pytest.approx(rec["predicted"]["value"])


def test_a_registered_online_method_serves_weights_and_learns_from_feedback(
    client: TestClient, plugins: None
) -> None:
    created = client.post(
        f"{API}/experiments",
        json={
            "name": "plugin-online",
            "mode": "online",
            "method": "greedy",
            "domains": DOMAINS,
            "config": {"step_size": 4.0},
        },
    )
    assert created.status_code == 201, created.text
    eid = created.json()["id"]
    run = client.post(f"{API}/experiments/{eid}/runs", json={"name": "main"}).json()
    first = run["weights"]
    assert first == pytest.approx(dict.fromkeys(NAMES, 1 / 3))
    body: dict[str, Any] = {
        "step": 500,
        "eval_losses": {"web": 2.0, "code": 3.0, "papers": 2.5},
        "tokens": dict.fromkeys(NAMES, 100),
    }
    answer = client.post(f"{API}/runs/{run['id']}/feedback", json=body)
    assert answer.status_code == 200, answer.text
    weights = answer.json()["weights"]
    assert weights["code"] > weights["papers"] > weights["web"]  # towards the highest loss
    stray = client.post(
        f"{API}/runs/{run['id']}/feedback", json={"step": 600, "eval_losses": {"nope": 1.0}}
    )
    assert stray.status_code == 422
    assert stray.json()["errors"][0]["loc"] == ["body", "eval_losses", "nope"]
    assert client.post(f"{API}/runs/{run['id']}/complete", json={"metrics": {}}).status_code == 200
    rec = client.get(f"{API}/experiments/{eid}/recommendation").json()
    assert rec["weights"] == pytest.approx(weights)
