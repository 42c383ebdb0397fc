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


def report(client: TestClient, eid: str, proposals: list[dict[str, Any]], prefix: str) -> None:
    """Import each proposed mixture as a finished run with its score."""
    for i, run in enumerate(proposals):
        client.post(
            f"{API}/experiments/{eid}/runs",
            json={
                "weights": run["weights"],
                "metrics": {"accuracy": score(run["weights"])},
                "external_id": f"{prefix}-{i}",
            },
        ).raise_for_status()


def best_weights(client: TestClient, eid: str, run_id: str) -> dict[str, float]:
    run: dict[str, Any] = client.get(f"{API}/runs/{run_id}").json()
    return dict(run["weights"])


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
    report(client, eid, first, "done")
    second = client.post(f"{API}/experiments/{eid}/proposals", json={"count": 16})
    assert second.status_code == 201, second.text
    batch = second.json()["items"]
    assert len(batch) == 16
    # Fitted on the first batch, the second batch moves towards the maximum.
    mean_first = sum(score(r["weights"]) for r in first) / len(first)
    mean_second = sum(score(r["weights"]) for r in batch) / len(batch)
    assert mean_second > mean_first

    # Fitted, the best run (largest accuracy) competes with the searched mixture, and the
    # recommendation says which won and why.
    report(client, eid, batch, "second")
    fit = client.post(f"{API}/experiments/{eid}/fit", json={"model": "gp"})
    assert fit.status_code == 200, fit.text
    best = max(fit.json()["oof"], key=lambda o: o["actual"])
    rec = client.get(f"{API}/experiments/{eid}/recommendation").json()
    assert rec["best_run"]["run_id"] == best["run_id"]
    assert rec["best_run"]["observed"] == pytest.approx(best["actual"])
    assert rec["chosen"] in ("search", "best_run")
    assert rec["reason"].startswith("best run: " if rec["chosen"] == "best_run" else "search: ")
    assert "does not compete" not in rec["reason"]
    if rec["chosen"] == "best_run":
        assert rec["weights"] == pytest.approx(rec["best_run"]["weights"])
    assert score(rec["weights"]) >= score(best_weights(client, eid, best["run_id"])) - 0.05


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
