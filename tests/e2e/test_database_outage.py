"""Postgres goes away under running servers and comes back: 503 with Retry-After meanwhile,
recovery without a restart, every acknowledged write kept, and no stale weights.

The test runs its own Postgres cluster (never the machine's shared server) so it can kill it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from service.store import SqlStore, schema
from service.store.sql import make_engine
from tests.conftest import Tokens
from tests.servers import ServerProcess, free_port
from tests.service.conftest import experiment_body
from tests.service.test_online import feedback, online_body

pytestmark = pytest.mark.slow

API = "/api/v1"


class PrivateCluster:
    """A throwaway Postgres cluster on a free port, started and killed at will."""

    def __init__(self) -> None:
        found = sorted(
            glob.glob("/usr/lib/postgresql/*/bin/initdb"),
            key=lambda p: int(Path(p).parent.parent.name),
        )
        if not found:
            pytest.fail("this test needs the Postgres server binaries (initdb, pg_ctl)")
        self.bin = Path(found[-1]).parent
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="mixopt-pg-"))
        self.data = self.root / "data"
        # initdb refuses to run as root: the cluster then belongs to the user postgres.
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/mixopt"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin / tool), *args],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def init(self) -> PrivateCluster:
        self._run("initdb", "-D", str(self.data), "--auth=trust", "-U", "postgres", "--no-sync")
        self.start()
        with psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE mixopt")
        return self

    def start(self) -> None:
        # fsync off: the test kills the server process, not the machine; the OS keeps the
        # writes either way, and the shared machine is spared the flushes.
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.root / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", "start")

    def kill(self) -> None:
        """Immediate shutdown: every backend dies at once, no checkpoint (like a crash)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def destroy(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():  # still running (a test failed early)
                self.kill()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    made = PrivateCluster()
    try:
        yield made.init()
    finally:
        made.destroy()


@pytest.fixture
def cluster_tokens(cluster: PrivateCluster) -> Tokens:
    engine = make_engine(cluster.url)
    schema.upgrade(engine)
    store = SqlStore(engine)
    try:
        return Tokens(
            read=store.create_token("reader", "read", None)[1],
            write=store.create_token("writer", "write", None)[1],
            admin=store.create_token("admin", "admin", None)[1],
        )
    finally:
        store.close()


@pytest.fixture
def replicas(
    cluster: PrivateCluster, cluster_tokens: Tokens, tmp_path: Path
) -> Iterator[list[ServerProcess]]:
    """Two service replicas on the private cluster, as in production (each with its cache)."""
    started = [ServerProcess(cluster.url, tmp_path) for _ in range(2)]
    try:
        with ThreadPoolExecutor(2) as pool:  # a start takes seconds: both at once
            list(pool.map(ServerProcess.start, started))
        yield started
    finally:
        for server in started:
            server.stop()


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, (response.request.url, response.text)
    assert response.headers["content-type"] == "application/problem+json"
    assert 1 <= int(response.headers["retry-after"]) <= 10
    body = response.json()
    assert body["status"] == 503
    assert body["title"] and body["detail"] and body["type"]
    for leak in ("127.0.0.1", "postgresql", "Traceback", "SELECT"):
        assert leak not in response.text


def wait_for(check: Callable[[], bool], seconds: float, what: str) -> float:
    """Poll ``check`` until it holds; the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > seconds:
            pytest.fail(f"{what} did not happen within {seconds} s")
        time.sleep(0.1)
    return time.monotonic() - start


def status_of(client: httpx.Client, method: str, url: str, **kwargs: Any) -> int:
    try:
        return client.request(method, url, **kwargs).status_code
    except httpx.HTTPError:
        return 0


def test_a_database_outage_is_503_until_it_returns_then_everything_recovers(
    cluster: PrivateCluster,
    cluster_tokens: Tokens,
    replicas: list[ServerProcess],
    http: Callable[..., httpx.Client],
) -> None:
    a, b = replicas
    admin = http(a.url, cluster_tokens.header("admin"), 30)
    writer = http(a.url, cluster_tokens.header("write"), 30)
    writer_b = http(b.url, cluster_tokens.header("write"), 30)
    reader = http(a.url, cluster_tokens.header("read"), 30)  # its token is never looked up yet
    public = http(a.url, {}, 30)

    # Before: an offline experiment with a claimed run and its metrics, an online run polled
    # on both replicas (so both have its weights cached).
    experiment = admin.post(f"{API}/experiments", json=experiment_body()).json()
    eid = experiment["id"]
    assert admin.post(f"{API}/experiments/{eid}/proposals", json={"count": 3}).status_code == 201
    claimed = writer.post(f"{API}/experiments/{eid}/claim", json={"worker": "node1"})
    run_id = claimed.json()["id"]
    points = [{"name": "loss", "step": s, "value": s / 10} for s in range(1, 51)]
    sent = writer.post(f"{API}/runs/{run_id}/metrics", json={"points": points})
    assert sent.status_code == 202  # acknowledged: must survive the outage
    online = admin.post(f"{API}/experiments", json=online_body()).json()
    started = writer.post(f"{API}/experiments/{online['id']}/runs", json={"name": "main"})
    online_run = started.json()["id"]
    weights_url = f"{API}/runs/{online_run}/weights"
    before = writer.get(weights_url).json()
    assert writer_b.get(weights_url).json()["version"] == before["version"]

    cluster.kill()
    went_down = time.monotonic()

    wait_for(lambda: status_of(public, "GET", "/readyz") == 503, 10, "/readyz failing")
    assert_unavailable(public.get("/readyz"))
    assert public.get("/healthz").status_code == 200
    assert_unavailable(admin.get(f"{API}/experiments/{eid}"))
    assert_unavailable(reader.get(f"{API}/experiments/{eid}"))  # a token lookup: 503, not 401
    more = [{"name": "loss", "step": 51, "value": 5.1}]
    assert_unavailable(writer.post(f"{API}/runs/{run_id}/metrics", json={"points": more}))
    assert_unavailable(writer.post(f"{API}/experiments/{eid}/claim", json={"worker": "node2"}))
    # The cache must stop answering once its feed is gone: a poll goes to the database.
    wait_for(lambda: status_of(writer, "GET", weights_url) == 503, 5, "weights poll failing")
    assert_unavailable(writer.get(weights_url))
    assert_unavailable(writer_b.get(weights_url))

    # Long enough that the listeners back off to their longest wait (5 s): the database is
    # then back before they are, the window in which notifications are missed.
    time.sleep(max(0.0, 7 - (time.monotonic() - went_down)))
    cluster.start()
    back = time.monotonic()

    # Replica B writes a new weights version as soon as it can, likely while A's listener is
    # still away: A must not answer from the entry it had before the outage.
    first = wait_for(
        lambda: (
            status_of(writer_b, "POST", f"{API}/runs/{online_run}/feedback", json=feedback(100))
            == 200
        ),
        15,
        "feedback through replica B",
    )
    after = writer_b.get(weights_url).json()
    assert after["version"] > before["version"]
    wait_for(lambda: status_of(writer, "GET", weights_url) == 200, 15, "weights poll on A")
    assert writer.get(weights_url).json()["version"] == after["version"]

    ready = wait_for(lambda: status_of(public, "GET", "/readyz") == 200, 15, "/readyz ready")
    print(f"first write {first:.2f} s and /readyz {time.monotonic() - back:.2f} s after restart")
    assert ready < 15

    # Everything written before the outage is there, and every kind of call works again.
    assert admin.get(f"{API}/experiments/{eid}").json()["name"] == experiment["name"]
    assert reader.get(f"{API}/experiments/{eid}").status_code == 200
    stored = writer.get(f"{API}/runs/{run_id}/metrics", params={"name": "loss", "limit": 1000})
    assert [(p["step"], p["value"]) for p in stored.json()["items"]] == [
        (p["step"], p["value"]) for p in points
    ]
    assert writer.post(f"{API}/runs/{run_id}/metrics", json={"points": more}).status_code == 202
    assert writer.post(f"{API}/experiments/{eid}/claim", json={"worker": "n2"}).status_code == 200
    # A write through A reaches B's cache: B's listener is back and hears notifications again.
    newer = writer.post(f"{API}/runs/{online_run}/feedback", json=feedback(200)).json()
    assert newer["version"] > after["version"]
    wait_for(
        lambda: writer_b.get(weights_url).json()["version"] == newer["version"],
        5,
        "replica B seeing A's write",
    )
    for server in (a, b):  # no request failed with a 500, and the sweeper never crashed
        log = server.log_path.read_text()
        assert "unhandled error" not in log and "lease sweep failed" not in log, log
