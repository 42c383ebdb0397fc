"""Kill the server with SIGKILL in the middle of writes; every acknowledged write survives."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Tokens
from tests.servers import ServerProcess
from tests.service.conftest import experiment_body

pytestmark = pytest.mark.slow


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(database_url, tmp_path).start()
    yield process
    process.stop()


def test_acknowledged_writes_survive_sigkill_and_restart(
    server: ServerProcess,
    tokens: Tokens,
    http: Callable[..., httpx.Client],
) -> None:
    admin = http(server.url, tokens.header("admin"), 30)
    eid = admin.post("/api/v1/experiments", json=experiment_body()).json()["id"]
    response = admin.post(f"/api/v1/experiments/{eid}/proposals", json={"count": 200})
    assert response.status_code == 201

    acknowledged_points: dict[str, list[tuple[str, int, float]]] = {}
    acknowledged_claims: dict[str, str] = {}
    acknowledged_completions: dict[str, dict[str, float]] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def worker(index: int) -> None:
        name = f"node{index}"
        with http(server.url, tokens.header("write"), 5) as c:
            step = 0
            while not stop.is_set():
                try:
                    claimed = c.post(f"/api/v1/experiments/{eid}/claim", json={"worker": name})
                    if claimed.status_code != 200:
                        return
                    run_id = claimed.json()["id"]
                    with lock:
                        acknowledged_claims[run_id] = name
                    for _ in range(3):
                        batch = [("loss", step + i, (step + i) / 3) for i in range(50)]
                        points = [{"name": n, "step": s, "value": v} for n, s, v in batch]
                        step += 50
                        sent = c.post(f"/api/v1/runs/{run_id}/metrics", json={"points": points})
                        if sent.status_code == 202:
                            with lock:
                                acknowledged_points.setdefault(run_id, []).extend(batch)
                    metrics = {"val_loss/web": 3.0 + index / 100}
                    done = c.post(
                        f"/api/v1/runs/{run_id}/complete",
                        json={"metrics": metrics, "worker": name},
                    )
                    if done.status_code == 200:
                        with lock:
                            acknowledged_completions[run_id] = metrics
                except httpx.HTTPError:
                    return  # the server died under us: what was answered is what counts

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(acknowledged_completions) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.kill()  # mid-flight: requests in progress get no answer
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert len(acknowledged_completions) >= 20

    server.start()
    reader = http(server.url, tokens.header("read"), 30)
    for run_id, metrics in acknowledged_completions.items():
        run = reader.get(f"/api/v1/runs/{run_id}").json()
        assert run["status"] == "completed" and run["metrics"] == metrics
    for run_id, worker_name in acknowledged_claims.items():
        run = reader.get(f"/api/v1/runs/{run_id}").json()
        if run_id not in acknowledged_completions:
            assert run["status"] in ("running", "completed")
            if run["status"] == "running":
                assert run["worker"] == worker_name
    for run_id, points in acknowledged_points.items():
        stored: set[tuple[str, int, float]] = set()
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
            page = reader.get(f"/api/v1/runs/{run_id}/metrics", params=params).json()
            stored |= {(p["name"], p["step"], p["value"]) for p in page["items"]}
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert set(points) <= stored
