"""``mixopt worker``: claims runs, trains them with a command, reports each outcome."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mixopt.client import MixoptClient
from mixopt.settings import Settings
from mixopt.worker import (
    CommandTrainer,
    ProxyRunTrainer,
    Worker,
    WorkerOptions,
    WorkerStats,
    build_worker,
    run_seed,
)
from service.main import create_app
from service.store import SqlStore
from tests.conftest import Clock, Tokens
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
    worker = Worker(client, eid, crash, name="node1/gpu0", failure_backoff_seconds=0)
    stats = worker.run(exit_when_idle=True)
    assert stats.failed == 2
    (run,) = store.iter_runs(eid)
    assert (run.status, run.attempt) == ("failed", 2)
    assert run.reason is not None and "exit code 3" in run.reason and "out of memory" in run.reason


def test_missing_metrics_file_fails_the_attempt(client: MixoptClient, store: SqlStore) -> None:
    eid = experiment(store, 1, max_attempts=1)
    worker = Worker(client, eid, command("pass"), name="w", failure_backoff_seconds=0)
    stats = worker.run(exit_when_idle=True)
    assert stats.failed == 1
    (run,) = store.iter_runs(eid)
    assert run.status == "failed" and "no metrics" in (run.reason or "")


def test_metrics_without_the_objectives_fail_the_attempt_with_the_servers_reason(
    client: MixoptClient, store: SqlStore
) -> None:
    eid = experiment(store, 1, max_attempts=2)
    wrong = command(
        "import json, os; json.dump({'loss': 3.1}, open(os.environ['MIXOPT_METRICS_FILE'], 'w'))"
    )
    stats = Worker(client, eid, wrong, name="w", failure_backoff_seconds=0).run(exit_when_idle=True)
    assert (stats.completed, stats.failed) == (0, 2)  # each attempt failed, then the run
    (run,) = store.iter_runs(eid)
    assert (run.status, run.attempt, run.metrics) == ("failed", 2, {})
    assert run.reason is not None
    assert "val_loss/web" in run.reason and "loss" in run.reason.split("sent:")[1]


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


class RecordedWaits(threading.Event):
    """A stop event that records how long the worker waited instead of waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout or 0.0)
        return self.is_set()


def test_command_runs_in_the_workers_directory_with_a_scratch_directory_of_its_own(
    client: MixoptClient, store: SqlStore, tmp_path: Path
) -> None:
    (tmp_path / "train.py").write_text(
        "import json, os, pathlib\n"
        "scratch = os.environ['MIXOPT_RUN_DIR']\n"
        "assert pathlib.Path(scratch).is_dir() and pathlib.Path.cwd() != pathlib.Path(scratch)\n"
        "pathlib.Path('seen.txt').write_text(scratch)\n"
        "json.dump({'val_loss/web': 1.0}, open(os.environ['MIXOPT_METRICS_FILE'], 'w'))\n"
    )
    eid = experiment(store, 1)
    worker = Worker(
        client, eid, CommandTrainer(f"{sys.executable} train.py", workdir=tmp_path), name="w"
    )
    assert worker.run(exit_when_idle=True).completed == 1
    scratch = Path((tmp_path / "seen.txt").read_text())
    assert not scratch.exists()  # removed when the attempt ended


def test_command_is_not_run_by_a_shell_unless_asked(
    client: MixoptClient, store: SqlStore, tmp_path: Path
) -> None:
    script = tmp_path / "metrics.py"
    script.write_text(
        "import json, sys; json.dump({'val_loss/web': 2.0, 'argv': len(sys.argv)}, "
        "open(sys.argv[1], 'w'))\n"
    )
    eid = experiment(store, 2, max_attempts=1)
    line = f"{sys.executable} {script} $MIXOPT_METRICS_FILE"
    plain = CommandTrainer(line, workdir=tmp_path)
    assert Worker(client, eid, plain, name="w", failure_backoff_seconds=0).run(max_runs=1).failed
    assert (tmp_path / "$MIXOPT_METRICS_FILE").exists()  # the name reached it literally
    shelled = Worker(client, eid, CommandTrainer(line, workdir=tmp_path, shell=True), name="w")
    assert shelled.run(max_runs=1).completed == 1
    assert sorted(run.status for run in store.iter_runs(eid)) == ["completed", "failed"]


def test_failures_in_a_row_back_off_and_then_stop_the_worker(
    client: MixoptClient, store: SqlStore
) -> None:
    eid = experiment(store, 6, max_attempts=1)
    crash = command("import sys; sys.stderr.write('ImportError: no module torch'); sys.exit(1)")
    worker = Worker(
        client, eid, crash, name="w", failure_backoff_seconds=2, max_consecutive_failures=3
    )
    worker._stop = waits = RecordedWaits()
    stats = worker.run(exit_when_idle=True)
    assert (stats.failed, waits.waits) == (3, [2, 4])  # doubling, then it gave up
    assert stats.gave_up is not None and "3 failed attempts in a row" in stats.gave_up
    assert "exit code 1" in stats.gave_up
    statuses = sorted(run.status for run in store.iter_runs(eid))
    assert statuses == ["failed"] * 3 + ["pending"] * 3  # the rest was left for a fixed worker


def test_a_success_resets_the_failure_count(client: MixoptClient, store: SqlStore) -> None:
    eid = experiment(store, 4, max_attempts=1)  # web weights 0.2, 0.4, 0.6, 0.8, claimed in order
    fails_on_odd_fifths = command(
        "import json, os, sys; w = json.loads(os.environ['MIXOPT_WEIGHTS']);"
        "sys.exit(1) if round(w['web'] * 5) % 2 else "
        "json.dump({'val_loss/web': 1.0}, open(os.environ['MIXOPT_METRICS_FILE'], 'w'))"
    )
    worker = Worker(client, eid, fails_on_odd_fifths, name="w", max_consecutive_failures=2)
    worker._stop = waits = RecordedWaits()
    stats = worker.run(exit_when_idle=True)
    # fail, succeed, fail, succeed: never two in a row, and each wait starts again at the base.
    assert (stats.failed, stats.completed, stats.gave_up) == (2, 2, None)
    assert waits.waits == [5.0, 5.0]


# --- the built-in proxy trainer -----------------------------------------------------------------

# Small enough that a run trains in well under 2 s on one core.
TINY_PROXY = {
    "model": {"block_size": 32, "n_layer": 1, "n_head": 1, "n_embd": 32},
    "train": {
        "steps": 20,
        "batch_size": 4,
        "warmup_steps": 2,
        "eval_every": 10,
        "eval_batches": 1,
        "log_every": 2,
        "threads": 1,
    },
}


def write_tiny_corpus(root: Path) -> Path:
    from tests.proxy_trainer.corpus_fixture import synthetic_domains, write_corpus

    source = synthetic_domains(seed=0, documents=12)
    write_corpus(root, {"web": source["words"], "code": source["arithmetic"]})
    return root


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    return write_tiny_corpus(tmp_path / "corpus")


@pytest.fixture
def proxy_file(tmp_path: Path) -> Path:
    path = tmp_path / "proxy.json"
    path.write_text(json.dumps(TINY_PROXY))
    return path


@dataclass
class FakeResult:
    metrics: dict[str, float]
    stopped: bool = False


class FakeTrain:
    """Stands in for ``proxy_trainer.train.train``: one train_loss point per step, then a
    val_loss per domain that depends on the mixture; records what it was given."""

    def __init__(self, steps: int = 20, delay: float = 0.0, error: Exception | None = None):
        self.steps = steps
        self.delay = delay
        self.error = error
        self.calls: list[dict[str, Any]] = []

    def __call__(
        self,
        corpus: Any,
        weights: dict[str, float],
        proxy_config: Any,
        *,
        quadmix_params: dict[str, Any] | None = None,
        report: Callable[[list[tuple[str, int, float]]], None] | None = None,
        checkpoint: Path | None = None,
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> FakeResult:
        self.calls.append({"weights": weights, "config": proxy_config, "quadmix": quadmix_params})
        assert report is not None and should_stop is not None and progress is not None
        for step in range(1, self.steps + 1):
            if should_stop():
                return FakeResult({}, stopped=True)
            report([("train_loss", step, 3.0 - 0.01 * step)])
            progress(step, self.steps)
            time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        metrics = {f"val_loss/{d}": 3.0 - w for d, w in weights.items()}
        return FakeResult({**metrics, "train_loss": 2.8})


def proxy_worker(
    client: MixoptClient,
    eid: str,
    corpus_dir: Path,
    proxy_file: Path,
    train: Any,
    name: str = "w",
    **options: Any,
) -> Worker:
    return build_worker(
        client,
        eid,
        WorkerOptions(
            corpus=corpus_dir,
            proxy_config=proxy_file,
            name=name,
            **{"failure_backoff_seconds": 0.0, **options},
        ),
        train=train,
    )


def test_proxy_trainer_streams_points_in_batches_and_completes(
    client: MixoptClient, store: SqlStore, corpus_dir: Path, proxy_file: Path
) -> None:
    eid = experiment(store, 2)
    fake = FakeTrain(steps=25)
    sent: list[int] = []
    append = client.append_metrics

    def recorded(run_id: str, points: Any) -> Any:
        points = list(points)
        sent.append(len(points))
        return append(run_id, points)

    client.append_metrics = recorded  # type: ignore[method-assign]
    worker = proxy_worker(client, eid, corpus_dir, proxy_file, fake)
    assert isinstance(worker.trainer, ProxyRunTrainer)
    worker.trainer.flush_points = 10
    assert worker.run(exit_when_idle=True).completed == 2
    assert sent == [10, 10, 5] * 2  # batches while training, the rest before complete
    runs = list(store.iter_runs(eid))
    for run in runs:
        assert run.status == "completed"
        assert run.metrics["val_loss/web"] == pytest.approx(3.0 - run.weights["web"])
        points = list(client.iter_metrics(run.id, name="train_loss"))
        assert [p.step for p in points] == list(range(1, 26))
    # Each run its own seed, derived from the run id: distinct, and reproducible.
    seeds = [call["config"].train.seed for call in fake.calls]
    assert seeds == [run_seed(run.id, 0) for run in runs] and len(set(seeds)) == 2
    assert all(call["config"].model.n_layer == 1 for call in fake.calls)


def test_run_params_carry_quadmix_and_proxy_overrides(
    client: MixoptClient, store: SqlStore, corpus_dir: Path, proxy_file: Path
) -> None:
    from service.store import NewRun

    eid = experiment(store, 0)
    sampling = {
        "merge": {"web": {"compression": 1.0}, "code": {"compression": 1.0}},
        "threshold": {"web": 0.5, "code": 0.5},
        "steepness": {"web": 1.0, "code": 1.0},
        "exponent": {"web": 1.0, "code": 1.0},
    }
    overrides = {"model": {"n_embd": 16}, "train": {"steps": 7, "seed": 42, "device": "cuda"}}
    store.add_runs(
        eid, [NewRun({"web": 0.5, "code": 0.5}, params={**sampling, "proxy": overrides})]
    )
    fake = FakeTrain()
    assert (
        proxy_worker(client, eid, corpus_dir, proxy_file, fake).run(exit_when_idle=True).completed
    )
    (call,) = fake.calls
    assert call["quadmix"] == sampling
    config = call["config"]
    # The run's hyperparameters win (its own seed too); the machine settings stay the worker's.
    assert (config.model.n_embd, config.model.n_layer) == (16, 1)
    assert (config.train.steps, config.train.seed) == (7, 42)
    assert (config.train.device, config.train.threads) == ("cpu", 1)


def test_unknown_proxy_override_fails_the_attempt_with_the_reason(
    client: MixoptClient, store: SqlStore, corpus_dir: Path, proxy_file: Path
) -> None:
    from service.store import NewRun

    eid = experiment(store, 0, max_attempts=1)
    store.add_runs(eid, [NewRun({"web": 1.0, "code": 0.0}, params={"proxy": {"train": {"lr": 1}}})])
    stats = proxy_worker(client, eid, corpus_dir, proxy_file, FakeTrain()).run(exit_when_idle=True)
    assert stats.failed == 1
    (run,) = store.iter_runs(eid)
    assert run.status == "failed" and "unknown TrainConfig fields: lr" in (run.reason or "")


def test_training_exception_fails_the_attempt_and_is_retried(
    client: MixoptClient, store: SqlStore, corpus_dir: Path, proxy_file: Path
) -> None:
    eid = experiment(store, 1, max_attempts=2)
    fake = FakeTrain(steps=3, error=RuntimeError("CUDA out of memory"))
    stats = proxy_worker(client, eid, corpus_dir, proxy_file, fake).run(exit_when_idle=True)
    assert stats.failed == 2 and len(fake.calls) == 2
    (run,) = store.iter_runs(eid)
    assert (run.status, run.attempt) == ("failed", 2)
    assert run.reason is not None and "RuntimeError: CUDA out of memory" in run.reason
    # The points of the failed attempts were kept (the retry re-sent the same values).
    assert len(list(client.iter_metrics(run.id))) == 3


def test_stopping_the_proxy_worker_releases_its_run(
    client: MixoptClient, store: SqlStore, corpus_dir: Path, proxy_file: Path
) -> None:
    eid = experiment(store, 1)
    fake = FakeTrain(steps=100_000, delay=0.01)
    worker = proxy_worker(client, eid, corpus_dir, proxy_file, fake, name="preempted")
    thread = threading.Thread(target=worker.run, kwargs={"max_runs": 1})
    thread.start()
    wait_for(lambda: any(True for _ in client.iter_metrics(next(store.iter_runs(eid)).id)))
    worker.stop()  # what SIGTERM does
    thread.join(timeout=30)
    (run,) = store.iter_runs(eid)
    assert (run.status, run.attempt, worker.stats.released) == ("pending", 1, 1)


def test_lost_lease_stops_training_and_reports_nothing(
    client: MixoptClient, store: SqlStore, clock: Clock, corpus_dir: Path, proxy_file: Path
) -> None:
    eid = experiment(store, 1)
    fake = FakeTrain(steps=100_000, delay=0.01)
    worker = proxy_worker(
        client, eid, corpus_dir, proxy_file, fake, lease_seconds=10, heartbeat_seconds=0.2
    )
    thread = threading.Thread(target=worker.run, kwargs={"max_runs": 1})
    thread.start()
    wait_for(lambda: next(store.iter_runs(eid)).status == "running")
    clock.advance(60)  # the worker hung past its lease: the service hands the run back
    assert store.expire_leases() == 1
    thread.join(timeout=30)
    assert not thread.is_alive()
    (run,) = store.iter_runs(eid)
    assert (run.status, run.attempt) == ("pending", 2)  # neither completed nor released by it
    assert worker.stats == WorkerStats()


def test_checkpoint_is_per_run_and_config_and_deleted_once_completed(
    client: MixoptClient, store: SqlStore, corpus_dir: Path, proxy_file: Path, tmp_path: Path
) -> None:
    eid = experiment(store, 1)
    paths: list[Path] = []

    class Checkpointing(FakeTrain):
        def __call__(self, *args: Any, checkpoint: Path | None = None, **kwargs: Any) -> Any:
            assert checkpoint is not None
            paths.append(checkpoint)
            checkpoint.write_bytes(b"state")  # as train() does at the end
            return super().__call__(*args, checkpoint=checkpoint, **kwargs)

    worker = proxy_worker(
        client, eid, corpus_dir, proxy_file, Checkpointing(), checkpoint_dir=tmp_path / "ckpt"
    )
    assert worker.run(exit_when_idle=True).completed == 1
    (run,) = store.iter_runs(eid)
    (path,) = paths
    assert path.parent == tmp_path / "ckpt" and path.name.startswith(f"run-{run.id}-")
    assert not path.exists()


def test_worker_cli_refuses_bad_options_without_a_traceback(
    client: MixoptClient, store: SqlStore, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from mixopt.cli import app

    eid = experiment(store, 1)
    server = ["--url", client.base_url, "--token", client.token or ""]
    runner = CliRunner()
    cases = {
        ("--corpus", str(tmp_path / "nowhere")): "no corpus at",
        ("--corpus", str(tmp_path), "--command", "true"): "exactly one of --command",
        (): "exactly one of --command",
        ("--command", "true", "--steps", "5"): "--steps apply to --corpus only",
    }
    for args, message in cases.items():
        result = runner.invoke(app, ["worker", eid, *args, *server])
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
    (run,) = store.iter_runs(eid)
    assert run.status == "pending"  # nothing was claimed


def test_corpus_without_the_experiments_domains_is_refused(
    client: MixoptClient, store: SqlStore, tmp_path: Path, proxy_file: Path
) -> None:
    from proxy_trainer.corpus import CorpusError
    from tests.proxy_trainer.corpus_fixture import synthetic_domains, write_corpus

    write_corpus(tmp_path / "other", {"noise": synthetic_domains(documents=4)["noise"]})
    eid = experiment(store, 1)
    with pytest.raises(CorpusError, match="lacks the experiment's domains web, code"):
        proxy_worker(client, eid, tmp_path / "other", proxy_file, FakeTrain())


def wait_for(condition: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def test_quadmix_runs_train_end_to_end_on_the_corpus_quality_scores(
    client: MixoptClient, store: SqlStore, tmp_path: Path, proxy_file: Path
) -> None:
    """A QuaDMix experiment over a built corpus: its proposals carry a sampling function over
    the corpus's own quality scores, and the built-in trainer draws documents by it."""
    from proxy_trainer.corpus import Corpus, build_corpus
    from service.store import NewExperiment

    out = tmp_path / "built"
    build_corpus(out, synthetic_only=True, max_tokens_per_domain=60_000)
    corpus = Corpus.open(out)
    created = store.create_experiment(
        NewExperiment(
            name="quadmix-e2e",
            mode="offline",
            method="quadmix",
            domains=[{"name": d, "prior": 1.0} for d in corpus.domains],
            objective={"metrics": {"val_loss/arithmetic": 1.0}, "direction": "minimize"},
            config={"seed": 3, "quality_scores": list(corpus.quality_scores)},
        )
    )
    proposed = client.propose(created.id, 2)
    assert all(set(run.params) >= {"merge", "threshold"} for run in proposed)
    worker = build_worker(
        client, created.id, WorkerOptions(corpus=out, proxy_config=proxy_file, name="q")
    )
    stats = worker.run(exit_when_idle=True)
    assert (stats.completed, stats.failed) == (2, 0)
    for run in client.iter_runs(created.id):
        assert run.status == "completed"
        assert set(run.metrics) >= {f"val_loss/{d}" for d in corpus.domains}
