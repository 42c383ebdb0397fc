"""Crash safety with real processes (issue 14): SIGKILL the server while 32 clients ingest
metrics, and SIGKILL a worker in the middle of its run.

What is checked is what a client can rely on: every batch answered 202 is stored exactly once
with its values, a batch whose answer was lost can be sent again as it was, and a crashed
worker's run goes back to the queue (the attempt counted) for another worker to finish once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
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

API = "/api/v1"


@pytest.fixture
def server(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ServerProcess]:
    # Expired leases go back to pending within a second, not only at the next claim.
    monkeypatch.setenv("MIXOPT_LEASE_SWEEP_SECONDS", "1")
    process = ServerProcess(database_url, tmp_path).start()
    yield process
    process.stop()


def wait_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.1)


def all_points(client: httpx.Client, run_id: str) -> list[tuple[str, int, float]]:
    """Every stored point of the run, through the API's pages."""
    points: list[tuple[str, int, float]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        response = client.get(f"{API}/runs/{run_id}/metrics", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        points += [(p["name"], p["step"], p["value"]) for p in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return points


# --- the server dies under 32 writers ---------------------------------------------------------


CLIENTS = 32
BATCHES = 8
PER_BATCH = 100
SHARED_RUNS = 4


def batch_points(client: int, batch: int) -> list[dict[str, Any]]:
    steps = range(batch * PER_BATCH, (batch + 1) * PER_BATCH)
    return [{"name": f"loss/c{client}", "step": s, "value": s / 7 + client} for s in steps]


def test_every_acknowledged_metric_batch_is_stored_exactly_once_across_a_sigkill(
    server: ServerProcess, tokens: Tokens, http: Callable[..., httpx.Client]
) -> None:
    admin = http(server.url, tokens.header("admin"), 60)
    eid = admin.post(f"{API}/experiments", json=experiment_body()).json()["id"]
    created = admin.post(
        f"{API}/experiments/{eid}/proposals", json={"count": CLIENTS + SHARED_RUNS}
    )
    assert created.status_code == 201, created.text
    run_ids = [r["id"] for r in created.json()["items"]]
    own, shared = run_ids[:CLIENTS], run_ids[CLIENTS:]

    def target(client: int, batch: int) -> str:
        # Every third batch goes to a run shared with other clients (their names differ).
        return shared[client % SHARED_RUNS] if batch % 3 == 2 else own[client]

    acknowledged: dict[tuple[int, int], int] = {}  # (client, batch) -> "new" in the 202
    unanswered: set[tuple[int, int]] = set()  # batches with a request that got no answer
    in_flight: set[tuple[int, int]] = set()  # ... of which one was sent before the kill
    unexpected: list[str] = []
    lock = threading.Lock()
    killed_at = [float("inf")]

    def ingest(client: int) -> None:
        with http(server.url, tokens.header("write"), 30) as c:
            for batch in range(BATCHES):
                body = {"points": batch_points(client, batch)}
                url = f"{API}/runs/{target(client, batch)}/metrics"
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    sent_at = time.monotonic()
                    try:
                        response = c.post(url, json=body)
                    except httpx.TransportError:
                        with lock:
                            unanswered.add((client, batch))
                            if sent_at < killed_at[0]:
                                in_flight.add((client, batch))
                        time.sleep(0.2)  # the server is down: retry the same points
                        continue
                    if response.status_code == 503:  # busy database: retry, as it says
                        time.sleep(0.2)
                        continue
                    if response.status_code != 202 or response.json()["accepted"] != PER_BATCH:
                        with lock:
                            unexpected.append(f"{response.status_code} {response.text}")
                        return
                    with lock:
                        acknowledged[(client, batch)] = response.json()["new"]
                    break
                else:
                    with lock:
                        unexpected.append(f"client {client} batch {batch}: no answer in time")
                    return

    threads = [threading.Thread(target=ingest, args=(i,), daemon=True) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(acknowledged) >= CLIENTS * BATCHES // 3, 60, "a third of the batches")
    killed_at[0] = time.monotonic()
    server.kill()
    acknowledged_before_restart = len(acknowledged)
    server.start()
    for thread in threads:
        thread.join(timeout=150)
    assert not any(thread.is_alive() for thread in threads)
    assert unexpected == []
    assert len(acknowledged) == CLIENTS * BATCHES
    assert acknowledged_before_restart < CLIENTS * BATCHES, "the kill came after the load"

    expected: dict[str, set[tuple[str, int, float]]] = {run_id: set() for run_id in run_ids}
    for client in range(CLIENTS):
        for batch in range(BATCHES):
            points = batch_points(client, batch)
            expected[target(client, batch)] |= {(p["name"], p["step"], p["value"]) for p in points}
    reader = http(server.url, tokens.header("read"), 60)
    for run_id in run_ids:
        stored = all_points(reader, run_id)
        assert len(stored) == len(set(stored)), f"run {run_id}: a point is stored twice"
        assert set(stored) == expected[run_id]
    # A batch is all-or-nothing: one whose answer was lost was retried and found either
    # entirely stored (committed before the kill) or not at all; every other was all new.
    committed_unanswered = [key for key in unanswered if acknowledged[key] == 0]
    assert all(acknowledged[key] in (0, PER_BATCH) for key in unanswered)
    assert all(new == PER_BATCH for key, new in acknowledged.items() if key not in unanswered)
    assert in_flight, "no request was in flight at the kill"
    print(
        f"\n{len(in_flight)} batches in flight at the kill, {len(unanswered)} unanswered in all, "
        f"{len(committed_unanswered)} of those committed; {acknowledged_before_restart} "
        "acknowledged before the restart"
    )


# --- a worker dies in the middle of its run ---------------------------------------------------


TRAIN_SCRIPT = """\
import json, os, sys, time
# A training command: says it started, trains for SLEEP seconds, writes its final metrics.
# It stops early when its worker dies (the worker runs it in a session of its own).
parent = os.getppid()
marker = os.path.join(sys.argv[1], os.environ["MIXOPT_RUN_ID"] + "-" + os.environ["WORKER"])
with open(marker, "w") as f:
    f.write(str(os.getpid()))
deadline = time.monotonic() + float(os.environ["SLEEP"])
while time.monotonic() < deadline:
    if os.getppid() != parent:
        sys.exit(3)
    time.sleep(0.1)
with open(os.environ["MIXOPT_METRICS_FILE"], "w") as f:
    json.dump({"val_loss/web": 2.5, "train_loss": 2.25}, f)
"""


class WorkerProcess:
    """``mixopt worker`` with the test's training command, in a process of its own."""

    def __init__(
        self, server: ServerProcess, token: str, experiment_id: str, name: str, sleep: float
    ) -> None:
        self.name = name
        workdir = server.workdir
        (workdir / "train.py").write_text(TRAIN_SCRIPT)
        (workdir / "markers").mkdir(exist_ok=True)
        self.markers = workdir / "markers"
        self.stats = workdir / f"stats-{name}.json"
        self.log_path = workdir / f"worker-{name}.log"
        command = f"{sys.executable} train.py {self.markers}"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "mixopt.cli", "worker", experiment_id),
                    *("--command", command, "--workdir", str(workdir), "--name", name),
                    *("--lease-seconds", "10", "--heartbeat-seconds", "1"),
                    *("--poll-seconds", "0.5", "--exit-when-done", "--max-failures", "0"),
                    *("--stats-file", str(self.stats), "--url", server.url, "--token", token),
                ],
                env={**os.environ, "WORKER": name, "SLEEP": str(sleep)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def marker(self, run_id: str) -> Path:
        return self.markers / f"{run_id}-{self.name}"

    def kill_command(self, run_id: str) -> None:
        """The orphaned command, if it outlived its worker (it should stop by itself)."""
        if self.marker(run_id).exists():
            with contextlib.suppress(ProcessLookupError, ValueError):  # it already ended
                os.kill(int(self.marker(run_id).read_text()), signal.SIGKILL)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


def test_a_killed_workers_run_returns_to_the_queue_and_another_worker_completes_it_once(
    server: ServerProcess, tokens: Tokens, http: Callable[..., httpx.Client]
) -> None:
    admin = http(server.url, tokens.header("admin"), 60)
    eid = admin.post(f"{API}/experiments", json=experiment_body()).json()["id"]
    created = admin.post(f"{API}/experiments/{eid}/proposals", json={"count": 1})
    run_id = created.json()["items"][0]["id"]
    reader = http(server.url, tokens.header("read"), 60)
    writer = http(server.url, tokens.header("write"), 60)

    def run() -> dict[str, Any]:
        answer: dict[str, Any] = reader.get(f"{API}/runs/{run_id}").json()
        return answer

    first = WorkerProcess(server, tokens.write, eid, "w1", sleep=600)
    second: WorkerProcess | None = None
    try:
        wait_for(lambda: first.marker(run_id).exists(), 60, "the first worker's command")
        assert run()["status"] == "running" and run()["worker"] == "w1"
        assert run()["attempt"] == 1
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=30)

        # The lease (10 s) runs out with no heartbeat; the sweep returns the run, attempt
        # counted, before any other worker asks.
        wait_for(lambda: run()["status"] == "pending", 60, "the lease to expire")
        assert run()["attempt"] == 2 and run()["worker"] is None
        late = writer.post(f"{API}/runs/{run_id}/heartbeat", json={"worker": "w1"})
        assert late.status_code == 409, late.text

        second = WorkerProcess(server, tokens.write, eid, "w2", sleep=5)
        wait_for(lambda: second.marker(run_id).exists(), 60, "the second worker's command")
        assert run()["status"] == "running" and run()["worker"] == "w2"
        # The first worker's report, arriving late while the second holds the lease.
        late = writer.post(
            f"{API}/runs/{run_id}/complete",
            json={"metrics": {"val_loss/web": 9.0}, "worker": "w1"},
        )
        assert late.status_code == 409, late.text
        assert second.process.wait(timeout=60) == 0, second.log_path.read_text()
    finally:
        for worker in (first, second):
            if worker is not None:
                worker.stop()
                worker.kill_command(run_id)

    final = run()
    assert final["status"] == "completed" and final["attempt"] == 2
    assert final["metrics"] == {"val_loss/web": 2.5, "train_loss": 2.25}
    assert json.loads(second.stats.read_text())["completed"] == 1
    counts = reader.get(f"{API}/experiments/{eid}").json()["counts"]
    assert counts["completed"] == 1 and counts["pending"] == counts["running"] == 0
    for late_call, body in (
        ("heartbeat", {"worker": "w1"}),
        ("release", {"worker": "w1"}),
        ("fail", {"reason": "late", "worker": "w1"}),
        ("complete", {"metrics": {"val_loss/web": 9.0}, "worker": "w1"}),
    ):
        late = writer.post(f"{API}/runs/{run_id}/{late_call}", json=body)
        assert late.status_code == 409, (late_call, late.text)
    assert run() == final
    # The first attempt's command stopped with its worker rather than train on as an orphan.
    pid = int(first.marker(run_id).read_text())
    wait_for(lambda: not process_alive(pid), 30, "the orphaned command to stop")


def process_alive(pid: int) -> bool:
    """Running, not merely an unreaped zombie (a container's init may never reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"
