"""``mixopt worker``: claims runs, trains them with a command, reports each outcome."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mixopt.client import MixoptClient
from mixopt.settings import Settings
from mixopt.worker import Worker
from service.main import create_app
from service.store import SqlStore
from tests.conftest import Tokens
from tests.servers import ThreadedServer

# A stand-in training script: the loss depends on the mixture it was given.
TRAIN = (
    "import json, os; w = json.loads(os.environ['MIXOPT_WEIGHTS']);"
    "json.dump({'val_loss/web': 3.0 - w['web']}, open(os.environ['MIXOPT_METRICS_FILE'], 'w'))"
)


@pytest.fixture
def client(store: SqlStore, tokens: Tokens) -> Iterator[MixoptClient]:
    with (
        ThreadedServer(create_app(Settings(token_cache_seconds=5), store)) as server,
        MixoptClient(server.url, tokens.write, backoff_base=0.01) as connected,
    ):
        yield connected


def experiment(store: SqlStore, runs: int, **config: Any) -> str:
    from service.store import NewExperiment, NewRun

    created = store.create_experiment(
        NewExperiment(
            name="worker",
            mode="offline",
            method="regmix",
            domains=[{"name": "web", "prior": 0.5}, {"name": "code", "prior": 0.5}],
            objective={"metrics": {"val_loss/web": 1.0}, "direction": "minimize"},
            config={"seed": 1, **config},
        )
    )
    store.add_runs(
        created.id,
        [
            NewRun({"web": (i + 1) / (runs + 1), "code": 1 - (i + 1) / (runs + 1)})
            for i in range(runs)
        ],
    )
    return created.id


def command(code: str) -> str:
    return f'{sys.executable} -c "{code}"'


def test_worker_trains_every_pending_run_and_completes_it(
    client: MixoptClient, store: SqlStore
) -> None:
    eid = experiment(store, 3)
    stats = Worker(client, eid, command(TRAIN), name="node1/gpu0").run(exit_when_idle=True)
    assert stats.completed == 3 and stats.failed == 0
    for run in store.iter_runs(eid):
        assert run.status == "completed"
        assert run.metrics == {"val_loss/web": pytest.approx(3.0 - run.weights["web"])}


def test_failing_command_is_retried_until_max_attempts(
    client: MixoptClient, store: SqlStore
) -> None:
    eid = experiment(store, 1, max_attempts=2)
    crash = command("import sys; sys.stderr.write('CUDA out of memory'); sys.exit(3)")
    stats = Worker(client, eid, crash, name="node1/gpu0").run(exit_when_idle=True)
    assert stats.failed == 2
    (run,) = store.iter_runs(eid)
    assert (run.status, run.attempt) == ("failed", 2)
    assert run.reason is not None and "exit code 3" in run.reason and "out of memory" in run.reason


def test_missing_metrics_file_fails_the_attempt(client: MixoptClient, store: SqlStore) -> None:
    eid = experiment(store, 1, max_attempts=1)
    stats = Worker(client, eid, command("pass"), name="w").run(exit_when_idle=True)
    assert stats.failed == 1
    (run,) = store.iter_runs(eid)
    assert run.status == "failed" and "no metrics" in (run.reason or "")


def test_stopping_the_worker_releases_its_run(client: MixoptClient, store: SqlStore) -> None:
    eid = experiment(store, 1)
    worker = Worker(client, eid, command("import time; time.sleep(60)"), name="preempted")
    thread = threading.Thread(target=worker.run, kwargs={"max_runs": 1})
    thread.start()
    deadline = time.monotonic() + 30
    while next(store.iter_runs(eid)).status != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.stop()  # what SIGTERM does
    thread.join(timeout=30)
    (run,) = store.iter_runs(eid)
    assert (run.status, run.attempt, worker.stats.released) == ("pending", 1, 1)


def test_heartbeats_keep_the_lease_alive(
    client: MixoptClient, store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    eid = experiment(store, 1)
    leases: list[Any] = []
    heartbeat = client.heartbeat

    def recorded(run_id: str, worker: str, **kwargs: Any) -> Any:
        run = heartbeat(run_id, worker, **kwargs)
        leases.append(run.lease_expires_at)
        return run

    monkeypatch.setattr(client, "heartbeat", recorded)
    slow = command("import time; time.sleep(1.5); " + TRAIN.replace('"', "'"))
    worker = Worker(client, eid, slow, name="w", lease_seconds=10, heartbeat_seconds=0.3)
    assert worker.run(exit_when_idle=True).completed == 1
    assert len(leases) >= 3 and leases == sorted(leases)  # each beat pushed the expiry on
    (run,) = store.iter_runs(eid)
    assert run.status == "completed"
