"""rounds and bayes through the API: they fit the stored history when asked for proposals, in
the objective's direction."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

API = "/api/v1"
DOMAINS = ("web", "code", "papers", "books")
TARGET = {"web": 0.4, "code": 0.3, "papers": 0.2, "books": 0.1}


def score(weights: dict[str, float]) -> float:
    """Highest (1.0) at TARGET."""
    return 1.0 - sum((weights[d] - t) ** 2 for d, t in TARGET.items())


def create(client: TestClient, method: str, **config: Any) -> dict[str, Any]:
    response = client.post(
        f"{API}/experiments",
        json={
            "name": f"{method}-seq",
            "method": method,
            "domains": [{"name": d} for d in DOMAINS],
            "objective": {"metrics": {"accuracy": 1.0}, "direction": "maximize"},
            "config": {"seed": 3, **config},
        },
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.parametrize("method", ["rounds", "bayes"])
def test_sequential_method_follows_the_objective_and_learns_from_the_runs(
    client: TestClient, method: str
) -> None:
    config = {"rounds": [16, 16]} if method == "rounds" else {"initial_runs": 16}
    experiment = create(client, method, **config)
    assert experiment["config"]["direction"] == "maximize"  # taken from the objective
    eid = experiment["id"]
    first = client.post(f"{API}/experiments/{eid}/proposals", json={"count": 16}).json()["items"]
    for i, run in enumerate(first):
        client.post(
            f"{API}/experiments/{eid}/runs",
            json={
                "weights": run["weights"],
                "metrics": {"accuracy": score(run["weights"])},
                "external_id": f"done-{i}",
            },
        ).raise_for_status()
    second = client.post(f"{API}/experiments/{eid}/proposals", json={"count": 16})
    assert second.status_code == 201, second.text
    batch = second.json()["items"]
    assert len(batch) == 16
    # Fitted on the first batch, the second batch moves towards the maximum.
    mean_first = sum(score(r["weights"]) for r in first) / len(first)
    mean_second = sum(score(r["weights"]) for r in batch) / len(batch)
    assert mean_second > mean_first


def test_a_config_direction_against_the_objective_is_422(client: TestClient) -> None:
    response = client.post(
        f"{API}/experiments",
        json={
            "name": "contradiction",
            "method": "rounds",
            "domains": [{"name": d} for d in DOMAINS],
            "objective": {"metrics": {"accuracy": 1.0}, "direction": "maximize"},
            "config": {"direction": "minimize"},
        },
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "config", "direction"]
