"""Completing an offline run needs every metric of the objective; online runs are not checked."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

API = "/api/v1"
WEIGHTS = {"web": 0.5, "code": 0.3, "papers": 0.2}


def claimed_run(client: TestClient, eid: str) -> str:
    run_id = client.post(f"{API}/experiments/{eid}/runs", json={"weights": WEIGHTS}).json()["id"]
    assert (
        client.post(f"{API}/experiments/{eid}/claim", json={"worker": "w"}).json()["id"] == run_id
    )
    return str(run_id)


def test_completing_without_an_objective_metric_is_refused_naming_both_sets(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    run_id = claimed_run(client, experiment["id"])
    response = client.post(
        f"{API}/runs/{run_id}/complete", json={"metrics": {"loss": 3.1}, "worker": "w"}
    )
    assert response.status_code == 422, response.text
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert problem["errors"][0]["loc"] == ["body", "metrics"]
    assert "val_loss/web" in problem["detail"] and "sent: loss" in problem["detail"]
    run = client.get(f"{API}/runs/{run_id}").json()
    assert (run["status"], run["worker"], run["metrics"]) == ("running", "w", {})


def test_completing_with_the_objective_metrics_succeeds_without_a_stale_reason(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    run_id = claimed_run(client, experiment["id"])
    client.post(f"{API}/runs/{run_id}/fail", json={"reason": "OOM", "worker": "w"})
    assert client.get(f"{API}/runs/{run_id}").json()["reason"] == "OOM"
    assert (
        client.post(f"{API}/experiments/{experiment['id']}/claim", json={"worker": "w"}).json()[
            "id"
        ]
        == run_id
    )
    response = client.post(
        f"{API}/runs/{run_id}/complete",
        json={"metrics": {"val_loss/web": 3.1, "extra": 1.0}, "worker": "w"},
    )
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["reason"]) == ("completed", None)


def test_online_runs_complete_without_the_objective_metrics(client: TestClient) -> None:
    body = {
        "name": "online-complete",
        "mode": "online",
        "method": "stratified",
        "domains": [{"name": "web", "tokens": 6e9}, {"name": "code", "tokens": 2e9}],
    }
    created = client.post(f"{API}/experiments", json=body)
    assert created.status_code == 201, created.text
    run = client.post(
        f"{API}/experiments/{created.json()['id']}/runs", json={"name": "r", "total_steps": 10}
    )
    assert run.status_code == 201, run.text
    done = client.post(f"{API}/runs/{run.json()['id']}/complete", json={"metrics": {}})
    assert done.status_code == 200, done.text
