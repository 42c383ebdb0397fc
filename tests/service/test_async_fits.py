"""Fits in the worker pool: ``wait: false`` answers 202 and the fit is polled; running and failed
fits never serve reads; a fit whose server died is failed, another replica's live one is not."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from mixopt.settings import Settings
from service.fit_runner import RESTART_REASON, FitRunner
from service.main import create_app
from service.store import NewRun, SqlStore
from tests.conftest import Clock, Tokens

API = "/api/v1"


def add_completed_runs(
    store: SqlStore, experiment_id: str, n: int = 16, *, same: bool = False
) -> None:
    rng = np.random.default_rng(0)
    runs = []
    for i in range(n):
        w = np.array([0.5, 0.3, 0.2]) if same else rng.dirichlet(np.ones(3))
        loss = 3.0 - 0.8 * w[0] - 0.3 * w[1] + 0.01 * i
        weights = dict(zip(["web", "code", "papers"], map(float, w), strict=True))
        runs.append(NewRun(weights, metrics={"val_loss/web": loss}, status="completed"))
    store.add_runs(experiment_id, runs)


def poll(client: TestClient, fit_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        report: dict[str, Any] = client.get(f"{API}/fits/{fit_id}").json()
        if report["status"] != "running" or time.monotonic() > deadline:
            return report
        time.sleep(0.1)


def test_a_fit_without_wait_answers_202_running_and_completes_in_the_background(
    client: TestClient, store: SqlStore, experiment: dict[str, Any]
) -> None:
    eid = experiment["id"]
    add_completed_runs(store, eid)
    first = client.post(f"{API}/experiments/{eid}/fit", json={"model": "linear"})
    assert first.status_code == 200, first.text  # wait defaults to true
    assert first.json()["status"] == "completed"
    assert first.json()["progress"]["stage"] is None

    started = client.post(f"{API}/experiments/{eid}/fit", json={"model": "linear", "wait": False})
    assert started.status_code == 202, started.text
    running = started.json()
    assert running["status"] == "running" and running["reason"] is None
    assert running["progress"]["elapsed_seconds"] >= 0
    assert running["id"] in [
        f["id"] for f in client.get(f"{API}/experiments/{eid}/fits").json()["items"]
    ]

    done = poll(client, running["id"])
    assert done["status"] == "completed", done
    assert done["cv"]["folds"] >= 2 and done["n_runs"] == 16
    assert done["finished_at"] >= done["started_at"]
    recommendation = client.get(f"{API}/experiments/{eid}/recommendation").json()
    assert recommendation["fit_id"] == running["id"]


def test_a_running_fit_serves_no_reads_until_it_completes(
    client: TestClient, store: SqlStore, experiment: dict[str, Any]
) -> None:
    eid = experiment["id"]
    add_completed_runs(store, eid)
    completed = client.post(f"{API}/experiments/{eid}/fit", json={"model": "linear"}).json()
    # A fit another replica is running (stored as running, beaten, never finished here).
    running = store.start_fit(eid, "gp", owner="another-replica")
    listed = client.get(f"{API}/experiments/{eid}/fits").json()["items"]
    assert [(f["id"], f["status"]) for f in listed] == [
        (running.id, "running"),
        (completed["id"], "completed"),
    ]
    assert listed[0]["cv"] == {
        "folds": 0,
        "spearman": None,
        "pearson": None,
        "mae": None,
        "r2": None,
    }
    assert client.get(f"{API}/experiments/{eid}/recommendation").json()["fit_id"] == completed["id"]
    predicted = client.post(
        f"{API}/experiments/{eid}/predict",
        json={"mixtures": [{"weights": {"web": 0.6, "code": 0.3, "papers": 0.1}}]},
    )
    assert predicted.status_code == 200, predicted.text


def test_a_fit_that_fails_in_its_worker_is_stored_failed_with_the_problem_as_reason(
    client: TestClient, store: SqlStore, experiment: dict[str, Any]
) -> None:
    eid = experiment["id"]
    # Enough usable runs (checked before starting) but a single mixture: the worker refuses.
    add_completed_runs(store, eid, 8, same=True)
    started = client.post(f"{API}/experiments/{eid}/fit", json={"model": "linear", "wait": False})
    assert started.status_code == 202, started.text
    failed = poll(client, started.json()["id"])
    assert failed["status"] == "failed" and "same mixture" in failed["reason"], failed

    waited = client.post(f"{API}/experiments/{eid}/fit", json={"model": "linear"})
    assert waited.status_code == 409, waited.text
    assert "same mixture" in waited.json()["detail"]
    statuses = [f["status"] for f in client.get(f"{API}/experiments/{eid}/fits").json()["items"]]
    assert statuses == ["failed", "failed"]
    assert client.get(f"{API}/experiments/{eid}/recommendation").status_code == 409


def test_checks_before_a_fit_starts_answer_at_once_without_wait(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    eid = experiment["id"]
    unknown = client.post(f"{API}/experiments/{eid}/fit", json={"model": "magic", "wait": False})
    assert unknown.status_code == 422
    assert unknown.json()["errors"][0]["loc"] == ["body", "model"]
    too_few = client.post(f"{API}/experiments/{eid}/fit", json={"wait": False})
    assert too_few.status_code == 409 and "fewer than 8" in too_few.json()["detail"]
    assert client.get(f"{API}/experiments/{eid}/fits").json()["items"] == []


def test_fits_of_a_server_that_died_are_failed_at_startup_and_a_live_replicas_are_kept(
    store: SqlStore, clock: Clock, tokens: Tokens, experiment: dict[str, Any]
) -> None:
    eid = experiment["id"]
    dead = store.start_fit(eid, "auto", owner="crashed-server")
    clock.advance(600)  # its heartbeat is long stale
    live = store.start_fit(eid, "auto", owner="live-replica")
    settings = Settings(token_cache_seconds=0, auth_free_failures=0, fit_workers=0)
    app = create_app(settings, store)
    with TestClient(app, headers=tokens.header("read")) as client:
        assert client.get(f"{API}/fits/{dead.id}").json()["reason"] == RESTART_REASON
        assert client.get(f"{API}/fits/{dead.id}").json()["status"] == "failed"
        assert client.get(f"{API}/fits/{live.id}").json()["status"] == "running"
        own = store.start_fit(eid, "auto", owner=app.state.ops.fits.instance)
    # Stopping, the server fails its own running fits at once; not the other replica's.
    assert store.get_fit(own.id).status == "failed"
    assert store.get_fit(own.id).reason == RESTART_REASON
    assert store.get_fit(live.id).status == "running"


def test_fit_workers_run_at_a_lower_cpu_priority_than_the_server(store: SqlStore) -> None:
    # On a machine with few cores a fit must leave the CPU to the requests (weights polls).
    async def worker_niceness() -> int:
        runner = FitRunner(store, workers=1, niceness=7)
        await runner.start()
        try:
            assert runner._executor is not None
            return int(await asyncio.wrap_future(runner._executor.submit(os.nice, 0)))
        finally:
            await runner.stop()

    assert asyncio.run(worker_niceness()) == min(os.nice(0) + 7, 19)
