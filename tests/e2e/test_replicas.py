"""Two ``mixopt serve`` processes on one Postgres database, behind the same clients (issue 14).

Replicas share nothing but the database: claims must never hand a run out twice, online
feedback must be applied exactly once whichever replica takes it, and a client alternating
between them must never see its weights go back to an older version.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from service.store import SqlStore
from service.store.sql import make_engine
from tests.conftest import Tokens
from tests.servers import ServerProcess
from tests.service.conftest import experiment_body
from tests.service.test_online import feedback, online_body

# Replicas coordinate through Postgres (row locks, LISTEN/NOTIFY); SQLite is one process's.
pytestmark = pytest.mark.slow

API = "/api/v1"


@dataclass
class Cluster:
    servers: list[ServerProcess]
    tokens: Tokens
    store: SqlStore
    """The database, read directly (the mixer state is not in the API)."""


@pytest.fixture(scope="module")
def cluster(pg_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two servers for the whole module: on a loaded machine each takes many seconds to start.
    The tests share the database but not experiments (nothing truncates it under them: the
    replicas' weights caches would then hold runs whose ids come back)."""
    store = SqlStore(make_engine(pg_database))
    suffix = uuid.uuid4().hex[:8]
    tokens = Tokens(
        *(store.create_token(f"{s}-{suffix}", s, None)[1] for s in ("read", "write", "admin"))
    )
    workdir = tmp_path_factory.mktemp("replicas")
    servers = [ServerProcess(pg_database, workdir) for _ in range(2)]
    try:
        # Started side by side: a server takes seconds to import and check its database.
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(ServerProcess.start, servers))
        yield Cluster(servers, tokens, store)
    finally:
        for server in servers:
            server.stop()
        store.close()


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def run_threads(count: int, target: Callable[[int], Any]) -> list[Any]:
    """``target(i)`` in ``count`` threads started together; their results, or the first error."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def body(index: int) -> None:
        try:
            barrier.wait()
            results[index] = target(index)
        except BaseException as exc:  # re-raised below, once every thread is done
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a client hung"
    if errors:
        raise errors[0]
    return results


def history(client: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        response = client.get(f"{API}/runs/{run_id}/weights/history", params=params)
        assert response.status_code == 200, response.text
        items += response.json()["items"]
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return items


def test_claims_through_two_replicas_hand_out_each_attempt_exactly_once(
    cluster: Cluster, http: Callable[..., httpx.Client]
) -> None:
    replicas, tokens = cluster.servers, cluster.tokens
    admin = http(replicas[0].url, tokens.header("admin"), 60)
    eid = admin.post(f"{API}/experiments", json=experiment_body(name=unique("claims"))).json()["id"]
    created = admin.post(f"{API}/experiments/{eid}/proposals", json={"count": 200})
    assert created.status_code == 201, created.text
    run_ids = {r["id"] for r in created.json()["items"]}
    # Every fifth run fails its first attempt: it is claimed again, as attempt 2.
    fails_once = set(sorted(run_ids)[::5])

    def worker(index: int) -> list[tuple[str, int]]:
        name = f"node{index}"
        pick = random.Random(index)
        clients = [http(server.url, tokens.header("write"), 60) for server in replicas]
        claims: list[tuple[str, int]] = []
        while True:
            claimed = pick.choice(clients).post(
                f"{API}/experiments/{eid}/claim", json={"worker": name, "lease_seconds": 600}
            )
            if claimed.status_code == 204:
                return claims
            assert claimed.status_code == 200, claimed.text
            run = claimed.json()
            assert run["status"] == "running" and run["worker"] == name
            claims.append((run["id"], run["attempt"]))
            beat = pick.choice(clients).post(
                f"{API}/runs/{run['id']}/heartbeat", json={"worker": name}
            )
            assert beat.status_code == 200, beat.text
            if run["id"] in fails_once and run["attempt"] == 1:
                failed = pick.choice(clients).post(
                    f"{API}/runs/{run['id']}/fail", json={"reason": "flaky node", "worker": name}
                )
                assert failed.status_code == 200, failed.text
                continue
            done = pick.choice(clients).post(
                f"{API}/runs/{run['id']}/complete",
                json={"metrics": {"val_loss/web": 3.0 + index / 100}, "worker": name},
            )
            assert done.status_code == 200, done.text

    claims = [claim for per_worker in run_threads(16, worker) for claim in per_worker]
    assert [key for key, n in Counter(claims).items() if n > 1] == []
    expected = {(r, 1) for r in run_ids} | {(r, 2) for r in fails_once}
    assert set(claims) == expected
    for server in replicas:
        counts = http(server.url, tokens.header("read")).get(f"{API}/experiments/{eid}").json()
        assert counts["counts"]["completed"] == 200
        assert counts["counts"]["pending"] == counts["counts"]["running"] == 0


def test_feedback_through_two_replicas_is_applied_once_per_step_and_never_lost(
    cluster: Cluster, http: Callable[..., httpx.Client]
) -> None:
    replicas, tokens, store = cluster.servers, cluster.tokens, cluster.store
    admin = http(replicas[0].url, tokens.header("admin"), 60)
    experiment = admin.post(f"{API}/experiments", json=online_body(name=unique("feedback"))).json()
    started = admin.post(f"{API}/experiments/{experiment['id']}/runs", json={"name": "main"})
    run_id = started.json()["id"]
    steps, complete_after = 40, 25
    next_step = iter(range(1, steps + 1))
    lock = threading.Lock()
    answers: list[tuple[int, int, str]] = []  # (step, status, detail)
    completed: list[int] = []

    def sender(index: int) -> None:
        clients = [http(server.url, tokens.header("write"), 60) for server in replicas]
        while True:
            with lock:
                k = next(next_step, None)
            if k is None:
                return
            if k == complete_after:
                # The run ends while other senders' feedback is in flight: complete and
                # feedback lock the same rows, and must not deadlock.
                done = clients[k % 2].post(
                    f"{API}/runs/{run_id}/complete", json={"metrics": {"eval_loss/mean": 2.6}}
                )
                with lock:
                    completed.append(done.status_code)
            body = feedback(k * 100, tokens={"web": 1, "code": 2, "papers": 3})
            # Each feedback goes to one replica, then again to the other: a trainer's retry
            # after a timeout, which must not count twice.
            for replica in (k + index) % 2, (k + index + 1) % 2:
                response = clients[replica].post(f"{API}/runs/{run_id}/feedback", json=body)
                with lock:
                    answers.append((k * 100, response.status_code, response.text))

    run_threads(4, sender)
    assert completed == [200]
    assert {status for _, status, _ in answers} <= {200, 409}, answers
    assert not [text for _, status, text in answers if "too many concurrent" in text]
    accepted = {step for step, status, _ in answers if status == 200}
    assert accepted, "no feedback was accepted"

    reader = http(replicas[1].url, tokens.header("read"), 60)
    versions = history(reader, run_id)
    assert [v["version"] for v in versions] == list(range(1, len(versions) + 1))
    assert not any(v["superseded"] for v in versions)
    applied = [v["step"] for v in versions[1:]]
    assert applied == sorted(set(applied)), "a step was applied twice or out of order"
    assert set(applied) == accepted
    # The mixer state folded each accepted feedback in exactly once.
    state = store.online_state(run_id)
    n = len(accepted)
    assert state.frozen and state.version == n + 1
    assert state.state["rounds"] == n
    assert state.state["tokens"] == {"web": n, "code": 2 * n, "papers": 3 * n}
    late = reader.get(f"{API}/runs/{run_id}").json()
    assert late["status"] == "completed"
    print(f"\n{n} of {steps} steps applied, {len(answers)} feedback posts")


def test_weights_polled_across_two_replicas_never_go_back(
    cluster: Cluster, http: Callable[..., httpx.Client]
) -> None:
    replicas, tokens = cluster.servers, cluster.tokens
    admin = http(replicas[0].url, tokens.header("admin"), 60)
    experiment = admin.post(
        f"{API}/experiments", json=online_body(name=unique("polls"), method="odm")
    ).json()
    started = admin.post(f"{API}/experiments/{experiment['id']}/runs", json={"name": "main"})
    run_id = started.json()["id"]
    path = f"{API}/runs/{run_id}/weights"
    steps = 40
    feeding = threading.Event()
    feeding.set()

    def feeder() -> int:
        clients = [http(server.url, tokens.header("write"), 60) for server in replicas]
        version = 1
        try:
            for k in range(1, steps + 1):
                answer = clients[k % 2].post(f"{API}/runs/{run_id}/feedback", json=feedback(k * 50))
                assert answer.status_code == 200, answer.text
                assert answer.json()["version"] == version + 1
                version += 1
        finally:
            feeding.clear()
        return version

    def poller(replica_order: list[int], etags: bool) -> list[int]:
        """Versions seen polling the replicas in turn (with If-None-Match, as mixopt.client)."""
        clients = [http(server.url, tokens.header("read"), 60) for server in replicas]
        seen: list[int] = []
        turn = 0
        while feeding.is_set():
            headers = {"If-None-Match": f'"{seen[-1]}"'} if etags and seen else {}
            response = clients[replica_order[turn % len(replica_order)]].get(path, headers=headers)
            turn += 1
            if response.status_code == 304:
                assert response.headers["etag"] == f'"{seen[-1]}"'
                seen.append(seen[-1])
                continue
            assert response.status_code == 200, response.text
            assert response.headers["etag"] == f'"{response.json()["version"]}"'
            seen.append(response.json()["version"])
        return seen

    def role(index: int) -> Any:
        if index == 0:
            return feeder()
        if index == 1:
            return poller([0, 1], etags=True)
        if index == 2:
            return poller([1], etags=True)  # the same run on one replica, for comparison
        return poller([0, 1], etags=False)  # no ETag: each replica answers what it has

    final, alternating, single, bare = run_threads(4, role)
    for seen in alternating, single:
        assert seen, "the poller got no answer"
        assert all(a <= b for a, b in itertools.pairwise(seen)), seen
    # Without If-None-Match a replica may lag its notification by a moment; once writes stop,
    # each replica's cache has caught up and serves the last version.
    for server in replicas:
        reader = http(server.url, tokens.header("read"), 30)
        deadline = time.monotonic() + 20
        while reader.get(path).json()["version"] != final and time.monotonic() < deadline:
            time.sleep(0.1)
        assert reader.get(path).json()["version"] == final
    went_back = sum(1 for a, b in itertools.pairwise(bare) if b < a)
    print(
        f"\npolls: {len(alternating)} alternating, {len(single)} on one replica, {len(bare)} "
        f"without ETag ({went_back} went back); final version {final}"
    )
