"""Many real clients at once, over HTTP, against a live server on each store."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from mixopt.settings import Settings
from service.main import create_app
from service.store import SqlStore
from tests.conftest import Tokens
from tests.servers import ThreadedServer
from tests.service.conftest import experiment_body


@pytest.fixture
def server(store: SqlStore) -> Iterator[ThreadedServer]:
    with ThreadedServer(create_app(Settings(token_cache_seconds=5), store)) as running:
        yield running


def run_threads(count: int, target: Any) -> list[Any]:
    """Start ``count`` threads at once (a barrier), join them, re-raise the first error."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def body(index: int) -> None:
        try:
            barrier.wait()
            results[index] = target(index)
        except BaseException as exc:  # reported below, with the thread's traceback
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    if errors:
        raise errors[0]
    return results


def test_concurrent_claims_hand_out_each_run_exactly_once(
    server: ThreadedServer,
    tokens: Tokens,
    http: Callable[..., httpx.Client],
) -> None:
    admin = http(server.url, tokens.header("admin"), 60)
    experiment = admin.post("/api/v1/experiments", json=experiment_body()).json()
    eid = experiment["id"]
    created: list[str] = []
    for _ in range(2):
        response = admin.post(f"/api/v1/experiments/{eid}/proposals", json={"count": 100})
        assert response.status_code == 201, response.text
        created += [r["id"] for r in response.json()["items"]]
    assert len(set(created)) == 200

    def worker(index: int) -> list[str]:
        claimed: list[str] = []
        with http(server.url, tokens.header("write"), 60) as c:
            while True:
                response = c.post(
                    f"/api/v1/experiments/{eid}/claim",
                    json={"worker": f"node{index}/gpu0", "lease_seconds": 600},
                )
                if response.status_code == 204:
                    return claimed
                assert response.status_code == 200, response.text
                run = response.json()
                assert run["status"] == "running" and run["worker"] == f"node{index}/gpu0"
                claimed.append(run["id"])

    handed_out = [run_id for ids in run_threads(16, worker) for run_id in ids]
    duplicates = [run_id for run_id, n in Counter(handed_out).items() if n > 1]
    assert duplicates == []
    assert sorted(handed_out) == sorted(created)
    counts = admin.get(f"/api/v1/experiments/{eid}").json()["counts"]
    assert counts["running"] == 200 and counts["pending"] == 0


def test_concurrent_metric_writers_lose_and_duplicate_nothing(
    server: ThreadedServer,
    tokens: Tokens,
    http: Callable[..., httpx.Client],
) -> None:
    admin = http(server.url, tokens.header("admin"), 60)
    eid = admin.post("/api/v1/experiments", json=experiment_body()).json()["id"]
    runs = admin.post(f"/api/v1/experiments/{eid}/proposals", json={"count": 4}).json()["items"]
    run_ids = [r["id"] for r in runs]
    writers, batches, per_batch = 32, 5, 100

    def writer(index: int) -> int:
        run_id = run_ids[index % len(run_ids)]
        new = 0
        with http(server.url, tokens.header("write"), 60) as c:
            for batch in range(batches):
                steps = range(batch * per_batch, (batch + 1) * per_batch)
                own = [{"name": f"loss/w{index}", "step": s, "value": s / 7} for s in steps]
                # Every writer also sends the same shared points: they must be stored once.
                shared = [{"name": "shared", "step": s, "value": s * 0.5} for s in steps[:20]]
                response = c.post(f"/api/v1/runs/{run_id}/metrics", json={"points": own + shared})
                assert response.status_code == 202, response.text
                assert response.json()["accepted"] == per_batch + 20
                new += response.json()["new"]
        return new

    new_counts = run_threads(writers, writer)

    expected: dict[str, set[tuple[str, int, float]]] = {r: set() for r in run_ids}
    for index in range(writers):
        run_id = run_ids[index % len(run_ids)]
        for s in range(batches * per_batch):
            expected[run_id].add((f"loss/w{index}", s, s / 7))
    for run_id in run_ids:
        for batch in range(batches):
            for s in range(batch * per_batch, batch * per_batch + 20):
                expected[run_id].add(("shared", s, s * 0.5))

    stored_total = 0
    for run_id in run_ids:
        points: list[tuple[str, int, float]] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 1000}
            if cursor:
                params["cursor"] = cursor
            page = admin.get(f"/api/v1/runs/{run_id}/metrics", params=params).json()
            points += [(p["name"], p["step"], p["value"]) for p in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(points) == len(set(points)), "a point was stored twice"
        assert set(points) == expected[run_id]
        stored_total += len(points)
    # Each point was reported "new" exactly once across all writers.
    assert sum(new_counts) == stored_total
