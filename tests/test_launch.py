"""``mixopt launch`` and worker processes: draining an experiment with N workers (local
subprocesses, Ray tasks), and what happens to a run when its worker is killed or stopped."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from mixopt.client import MixoptClient
from mixopt.launch import LaunchReport, WorkerOptions, launch
from mixopt.settings import Settings
from mixopt.worker import RunContext, RunOutcome, Worker, build_worker
from service.main import create_app
from service.store import SqlStore
from tests.conftest import Tokens
from tests.servers import ThreadedServer
from tests.test_worker import (
    TINY_PROXY,
    TRAIN,
    FakeTrain,
    command,
    experiment,
    wait_for,
    write_tiny_corpus,
)

# Subprocesses and Ray are heavy: their tests run on SQLite only (the store's semantics are
# covered on both backends elsewhere).
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def server(store: SqlStore) -> Iterator[ThreadedServer]:
    with ThreadedServer(create_app(Settings(token_cache_seconds=5), store)) as running:
        yield running


@pytest.fixture
def client(server: ThreadedServer, tokens: Tokens) -> Iterator[MixoptClient]:
    with MixoptClient(server.url, tokens.write, backoff_base=0.01) as connected:
        yield connected


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    return write_tiny_corpus(tmp_path / "corpus")


@pytest.fixture
def proxy_file(tmp_path: Path) -> Path:
    import json

    path = tmp_path / "proxy.json"
    path.write_text(json.dumps(TINY_PROXY))
    return path


@pytest.fixture
def real_trainer() -> None:
    pytest.importorskip("proxy_trainer.train")


def spawn_worker(client: MixoptClient, eid: str, *args: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MIXOPT_URL": client.base_url, "MIXOPT_TOKEN": client.token or ""}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "mixopt.cli", "worker", eid, *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def has_points(client: MixoptClient, run_id: str) -> bool:
    return client.list_metrics(run_id, limit=1).items != []


def test_two_workers_drain_an_experiment_without_overlap(
    client: MixoptClient, store: SqlStore, corpus_dir: Path, proxy_file: Path
) -> None:
    eid = experiment(store, 8)
    trained: dict[str, list[str]] = {"a": [], "b": []}

    def recording(name: str) -> Worker:
        fake = FakeTrain(steps=5, delay=0.02)
        worker = build_worker(
            client,
            eid,
            WorkerOptions(corpus=corpus_dir, proxy_config=proxy_file, name=name),
            train=fake,
        )
        inner = worker.trainer

        def trainer(run: object, context: RunContext) -> RunOutcome:
            trained[name].append(context.run.id)
            return inner(context.run, context)

        worker.trainer = trainer
        return worker

    workers = [recording("a"), recording("b")]
    threads = [threading.Thread(target=w.run, kwargs={"exit_when_done": True}) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    runs = list(store.iter_runs(eid))
    assert all(run.status == "completed" and run.attempt == 1 for run in runs)
    claims = Counter(trained["a"] + trained["b"])
    assert set(claims) == {run.id for run in runs} and set(claims.values()) == {1}
    assert trained["a"] and trained["b"]  # both took part
    assert sum(w.stats.completed for w in workers) == 8


@sqlite_only
@pytest.mark.usefixtures("real_trainer")
def test_builtin_trainer_completes_with_per_domain_losses_and_stored_points(
    client: MixoptClient, store: SqlStore, corpus_dir: Path, proxy_file: Path
) -> None:
    eid = experiment(store, 2)
    options = WorkerOptions(corpus=corpus_dir, proxy_config=proxy_file, name="real")
    started = time.monotonic()
    stats = build_worker(client, eid, options).run(exit_when_idle=True)
    assert stats.completed == 2, stats
    assert time.monotonic() - started < 30
    for run in store.iter_runs(eid):
        assert run.status == "completed"
        for domain in ("web", "code"):
            assert 0 < run.metrics[f"val_loss/{domain}"] < 10
        names = {point.name for point in client.iter_metrics(run.id)}
        assert "train_loss" in names and "val_loss/web" in names


@pytest.mark.slow  # a real 10 s lease expiry; the fast tier has the in-process release tests
@sqlite_only
@pytest.mark.usefixtures("real_trainer")
def test_killed_workers_run_is_finished_by_another_after_its_lease(
    client: MixoptClient, store: SqlStore, corpus_dir: Path, proxy_file: Path, tmp_path: Path
) -> None:
    eid = experiment(store, 1)
    doomed = spawn_worker(
        client, eid,
        "--corpus", str(corpus_dir), "--proxy-config", str(proxy_file), "--steps", "100000",
        "--lease-seconds", "10", "--name", "doomed",
        log=tmp_path / "doomed.log",
    )  # fmt: skip
    try:
        (run,) = store.iter_runs(eid)
        wait_for(lambda: has_points(client, run.id))  # mid-run, points streaming
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=30)
    finally:
        if doomed.poll() is None:
            doomed.kill()
    assert store.get_run(run.id).status == "running"  # nobody said anything
    options = WorkerOptions(
        corpus=corpus_dir, proxy_config=proxy_file, name="rescuer", poll_seconds=0.5
    )
    started = time.monotonic()
    stats = build_worker(client, eid, options).run(exit_when_done=True)
    assert stats.completed == 1
    assert time.monotonic() - started < 40  # the 10 s lease, then the run
    finished = store.get_run(run.id)
    assert (finished.status, finished.attempt) == ("completed", 2)  # the expiry counted one
    assert "val_loss/web" in finished.metrics


@pytest.mark.slow  # a subprocess trainer; test_worker's stopping tests release in-process
@sqlite_only
@pytest.mark.usefixtures("real_trainer")
def test_sigterm_releases_the_run(
    client: MixoptClient, store: SqlStore, corpus_dir: Path, proxy_file: Path, tmp_path: Path
) -> None:
    eid = experiment(store, 1)
    log = tmp_path / "worker.log"
    worker = spawn_worker(
        client, eid,
        "--corpus", str(corpus_dir), "--proxy-config", str(proxy_file), "--steps", "100000",
        log=log,
    )  # fmt: skip
    (run,) = store.iter_runs(eid)
    try:
        wait_for(lambda: has_points(client, run.id))
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    released = store.get_run(run.id)
    assert (released.status, released.attempt) == ("pending", 1)
    assert "1 released" in log.read_text()


def check_drained(report: LaunchReport, store: SqlStore, eid: str, runs: int) -> None:
    assert report.completed == runs and report.failed == 0 and not report.errors, report
    assert report.counts.completed == runs and report.counts.pending == 0
    assert all(run.status == "completed" for run in store.iter_runs(eid))


@sqlite_only
def test_launch_local_drains_with_commands(
    client: MixoptClient, store: SqlStore, tmp_path: Path
) -> None:
    eid = experiment(store, 6)
    seen: list[tuple[int, int]] = []
    report = launch(
        client.base_url,
        client.token,
        eid,
        workers=2,
        backend="local",
        options=WorkerOptions(command=command(TRAIN), poll_seconds=0.5),
        progress=lambda done, total: seen.append((done, total)),
        log_dir=tmp_path / "logs",
    )
    check_drained(report, store, eid, 6)
    assert seen[-1] == (6, 6) and seen == sorted(seen)
    assert len(list((tmp_path / "logs").glob("worker-*.log"))) == 2


@pytest.mark.slow  # two trainer subprocesses; the fast tier drains with commands
@sqlite_only
@pytest.mark.usefixtures("real_trainer")
def test_launch_local_drains_with_the_builtin_trainer(
    client: MixoptClient, store: SqlStore, corpus_dir: Path, proxy_file: Path
) -> None:
    eid = experiment(store, 4)
    options = WorkerOptions(corpus=corpus_dir, proxy_config=proxy_file, poll_seconds=0.5)
    report = launch(client.base_url, client.token, eid, workers=2, options=options)
    check_drained(report, store, eid, 4)
    assert report.runs_per_minute > 0


@sqlite_only
def test_launch_cli_shows_a_summary(client: MixoptClient, store: SqlStore, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mixopt.cli import app

    eid = experiment(store, 3)
    args = ["launch", eid, "--workers", "2", "--command", command(TRAIN), "--poll-seconds", "0.5"]
    server = ["--url", client.base_url, "--token", client.token or ""]
    result = CliRunner().invoke(app, [*args, *server])
    assert result.exit_code == 0, result.output
    assert "2 local workers: 3 completed, 0 failed, 0 released" in result.output
    assert "runs/min" in result.output
    refused = CliRunner().invoke(app, ["launch", eid, "--backend", "slurm", *server])
    assert refused.exit_code == 2 and "unknown --backend 'slurm'" in refused.output


@pytest.mark.slow
@sqlite_only
def test_launch_ray_drains_on_a_local_ray(
    client: MixoptClient, store: SqlStore, corpus_dir: Path, proxy_file: Path
) -> None:
    ray = pytest.importorskip("ray")
    if importlib.util.find_spec("proxy_trainer.train") is not None:
        options = WorkerOptions(corpus=corpus_dir, proxy_config=proxy_file, poll_seconds=0.5)
    else:  # the launcher's part does not depend on the trainer
        options = WorkerOptions(command=command(TRAIN), poll_seconds=0.5)
    eid = experiment(store, 4)
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        report = launch(
            client.base_url, client.token, eid, workers=2, backend="ray", options=options
        )
    finally:
        ray.shutdown()
    check_drained(report, store, eid, 4)
    assert report.backend == "ray"


@sqlite_only
def test_launch_takes_the_workers_training_flags(
    client: MixoptClient, store: SqlStore, tmp_path: Path
) -> None:
    """``launch`` and ``worker`` share one list of training flags: --shell and --workdir reach
    the launched workers (the script is found in --workdir, $MIXOPT_METRICS_FILE expanded)."""
    import typer.main
    from typer.testing import CliRunner

    from mixopt.cli import app
    from mixopt.cli.worker import TRAINING_FLAGS

    root = typer.main.get_command(app)
    context = root.make_context("mixopt", [], resilient_parsing=True)
    for name in ("worker", "launch"):
        command = root.get_command(context, name)  # type: ignore[attr-defined]
        params = {param.name for param in command.params}
        assert {flag for flag, _, _ in TRAINING_FLAGS} <= params, name
    (tmp_path / "train.py").write_text(
        "import json, sys; json.dump({'val_loss/web': 2.0}, open(sys.argv[1], 'w'))\n"
    )
    eid = experiment(store, 2)
    result = CliRunner().invoke(
        app,
        [
            "launch", eid, "--workers", "1", "--poll-seconds", "0.5",
            "--command", f"{sys.executable} train.py $MIXOPT_METRICS_FILE",
            "--shell", "--workdir", str(tmp_path),
            "--url", client.base_url, "--token", client.token or "",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "1 local workers: 2 completed, 0 failed" in result.output
