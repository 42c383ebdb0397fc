"""``POST /runs/{id}/retry``: a failed offline run goes back to the queue with a fresh budget."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from mixopt.errors import Conflict
from service.store import SqlStore
from tests.conftest import Tokens
from tests.test_worker import experiment as queued_experiment

WEIGHTS = {"web": 0.5, "code": 0.3, "papers": 0.2}


def failed_run(client: TestClient, experiment: dict[str, Any]) -> str:
    """A run that failed all of its attempts (the experiment allows 3)."""
    eid = experiment["id"]
    run_id = client.post(f"/api/v1/experiments/{eid}/runs", json={"weights": WEIGHTS}).json()["id"]
    for _ in range(3):
        claimed = client.post(f"/api/v1/experiments/{eid}/claim", json={"worker": "w"}).json()
        assert claimed["id"] == run_id
        client.post(f"/api/v1/runs/{run_id}/fail", json={"reason": "OOM", "worker": "w"})
    run = client.get(f"/api/v1/runs/{run_id}").json()
    assert (run["status"], run["attempt"], run["reason"]) == ("failed", 3, "OOM")
    return str(run_id)


def test_a_failed_run_is_pending_again_with_a_fresh_attempt_budget(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    run_id = failed_run(client, experiment)
    response = client.post(f"/api/v1/runs/{run_id}/retry")
    assert response.status_code == 200, response.text
    run = response.json()
    assert (run["status"], run["attempt"], run["reason"], run["worker"]) == (
        "pending",
        1,
        None,
        None,
    )
    claimed = client.post(f"/api/v1/experiments/{experiment['id']}/claim", json={"worker": "w2"})
    assert claimed.json()["id"] == run_id  # the queue hands it out again


def test_only_failed_runs_can_be_retried(client: TestClient, experiment: dict[str, Any]) -> None:
    eid = experiment["id"]
    pending = client.post(f"/api/v1/experiments/{eid}/runs", json={"weights": WEIGHTS}).json()
    response = client.post(f"/api/v1/runs/{pending['id']}/retry")
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert "pending" in response.json()["detail"]
    assert client.post("/api/v1/runs/999999/retry").status_code == 404


def test_retrying_needs_the_write_scope(
    client: TestClient, experiment: dict[str, Any], tokens: Tokens
) -> None:
    run_id = failed_run(client, experiment)
    refused = client.post(f"/api/v1/runs/{run_id}/retry", headers=tokens.header("read"))
    assert refused.status_code == 403
    assert client.get(f"/api/v1/runs/{run_id}").json()["status"] == "failed"


def test_an_online_training_run_cannot_be_retried(client: TestClient) -> None:
    from tests.service.test_online import online_body

    eid = client.post("/api/v1/experiments", json=online_body()).json()["id"]
    run = client.post(f"/api/v1/experiments/{eid}/runs", json={"name": "main"}).json()
    response = client.post(f"/api/v1/runs/{run['id']}/retry")
    assert response.status_code == 409 and "online" in response.json()["detail"]


def test_store_retry_of_a_failed_run_clears_its_reason(store: SqlStore) -> None:
    eid = queued_experiment(store, 1, max_attempts=1)
    (run,) = store.iter_runs(eid)
    assert store.claim(eid, "w", 60) is not None
    assert store.fail(run.id, "broken command", "w").status == "failed"
    again = store.retry(run.id)
    assert (again.status, again.attempt, again.reason, again.worker) == ("pending", 1, None, None)
    with pytest.raises(Conflict):
        store.retry(run.id)


def test_a_run_completed_after_a_failed_attempt_keeps_no_stale_reason(store: SqlStore) -> None:
    eid = queued_experiment(store, 2)
    first, second = store.iter_runs(eid)
    claimed = store.claim(eid, "w", 60)
    assert claimed is not None and claimed.id == first.id
    assert store.fail(first.id, "CUDA out of memory", "w").reason == "CUDA out of memory"
    assert store.claim(eid, "w", 60) is not None
    assert store.complete(first.id, {"val_loss/web": 2.0}, "w").reason is None
    # An exclusion's reason is not an attempt's: it stays.
    store.exclude(second.id, True, "bad node")
    assert store.complete(second.id, {"val_loss/web": 9.0}, None).reason == "bad node"
