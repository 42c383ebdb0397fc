"""A queue worker for offline experiments: ``mixopt worker ID --command ... | --corpus DIR``.

It claims the oldest pending run, keeps the lease alive with heartbeats while a *run trainer*
trains it, and reports the outcome: completed with the trainer's metrics, failed (retried by the
service up to ``max_attempts``) when training fails, released when the worker is told to stop
(SIGTERM, SIGINT), so a preempted node hands its run straight back. When the lease is lost (a
heartbeat answers 409: the run expired and another worker may hold it), training stops and the
worker reports nothing for that run.

Two run trainers are built in:

``CommandTrainer`` runs a command per run in the worker's working directory (``--workdir``,
default: where the worker was started), so ``python train.py`` finds ``train.py``. The command is
split like a shell would split it but is not run by one (no ``$VAR`` expansion, pipes or ``&&``)
unless ``--shell`` asks for ``/bin/sh -c``. It learns its run from the environment:

- ``MIXOPT_RUN_ID``, ``MIXOPT_EXPERIMENT_ID``
- ``MIXOPT_RUN_DIR``: a scratch directory of its own, deleted when the attempt ends
- ``MIXOPT_WEIGHTS``: the mixture as JSON, ``{"domain": weight, ...}``
- ``MIXOPT_RUN_FILE``: the whole run (weights, params, tags) as a JSON file
- ``MIXOPT_METRICS_FILE``: where to write the final metrics, a JSON object name -> number
- ``MIXOPT_URL``, ``MIXOPT_TOKEN``: to post metric points along the way (``mixopt.client``)

``ProxyRunTrainer`` trains the run in-process with ``proxy_trainer.train.train`` on a corpus
directory (extra ``mixopt[trainer]``: torch is imported only when it is used):

- the proxy config is the worker's (a preset, then a ``--proxy-config`` JSON merged over it, then
  ``--steps``); a run's ``params["proxy"]`` (``{"model": {...}, "train": {...}}``) is merged over
  that, since it describes the run itself (a scaling study varies it per run), except ``device``
  and ``threads``, which belong to the machine and stay the worker's;
- the seed: ``params["proxy"]["train"]["seed"]`` if the run sets one, else a hash of the config's
  seed and the run id (``run_seed``): runs differ from one another, and a retry of a run, on any
  worker, draws the same initialisation and batches as its first attempt;
- a QuaDMix run's sampling function (``params`` keys merge/threshold/steepness/exponent) is
  passed as ``quadmix_params``;
- metric points stream to the service in batches (``MetricStream``) and the final metrics
  (``val_loss/<domain>``, ``train_loss``, ``tokens/<domain>``) complete the run;
- with a checkpoint directory, a stopped run saves ``run-<id>-<config hash>.pt`` there and
  whichever worker claims the run next with the same directory and config resumes from it; the
  file is deleted once the run is completed.

After a failed attempt the worker waits before claiming again (doubling from
``failure_backoff_seconds`` up to five minutes), and after ``max_consecutive_failures`` failures in
a row it stops and says so: a broken command should not burn through the queue's attempts.

Only ``mixopt.client`` talks to the service: a worker needs no database and no server code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from mixopt import schemas
from mixopt.client import ConflictError, MixoptAPIError, MixoptClient, ValidationError
from mixopt.worker.command import CommandTrainer
from mixopt.worker.run import RunContext, RunOutcome, RunTrainer

if TYPE_CHECKING:
    from proxy_trainer.config import ProxyConfig
    from proxy_trainer.corpus import Corpus

__all__ = [
    "QUADMIX_KEYS",
    "CommandTrainer",
    "MetricStream",
    "ProxyRunTrainer",
    "RunContext",
    "RunOutcome",
    "RunTrainer",
    "TrainFunction",
    "Worker",
    "WorkerOptions",
    "WorkerStats",
    "build_worker",
    "default_name",
    "load_proxy_config",
    "run_proxy_config",
    "run_seed",
]

log = logging.getLogger("mixopt.worker")

QUADMIX_KEYS = ("merge", "threshold", "steepness", "exponent")
"""A QuaDMix run's sampling function in its ``params`` (``mixers.offline.quadmix.params``)."""
MAX_BACKOFF = 300.0
"""The longest wait after failed attempts, in seconds."""
MACHINE_SETTINGS = ("device", "threads")
"""TrainConfig fields a run's params cannot override: they describe the worker's machine."""


@dataclass
class WorkerStats:
    completed: int = 0
    failed: int = 0
    released: int = 0
    gave_up: str | None = None
    """Why the worker stopped early (too many failures in a row), or None."""


# --- the worker --------------------------------------------------------------------------------


class Worker:
    def __init__(
        self,
        client: MixoptClient,
        experiment_id: str,
        trainer: RunTrainer | str,
        *,
        name: str,
        lease_seconds: int = 600,
        heartbeat_seconds: float | None = None,
        poll_seconds: float = 30.0,
        failure_backoff_seconds: float = 5.0,
        max_consecutive_failures: int | None = 5,
    ) -> None:
        """``trainer``: a ``RunTrainer``, or a command line (a ``CommandTrainer``).
        ``max_consecutive_failures``: stop after this many failed attempts in a row (None:
        never)."""
        self.client = client
        self.experiment_id = experiment_id
        self.trainer: RunTrainer = CommandTrainer(trainer) if isinstance(trainer, str) else trainer
        self.name = name
        self.lease_seconds = lease_seconds
        # Three heartbeats per lease: one lost request does not cost the run.
        self.heartbeat_seconds = heartbeat_seconds or lease_seconds / 3
        self.poll_seconds = poll_seconds
        self.failure_backoff_seconds = failure_backoff_seconds
        self.max_consecutive_failures = max_consecutive_failures
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self._last_failure = ""

    def stop(self) -> None:
        """Finish as soon as possible: the run in progress is released, not failed."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            log.warning("signal %d: releasing the current run and stopping", signum)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(
        self,
        *,
        max_runs: int | None = None,
        exit_when_idle: bool = False,
        exit_when_done: bool = False,
    ) -> WorkerStats:
        """Claim and train runs until stopped or ``max_runs``. With nothing pending, stop if
        ``exit_when_idle``; if ``exit_when_done``, stop only once no run is running either (a
        running run may still fail and be retried, or its lease expire), else poll."""
        done = 0
        failures_in_a_row = 0
        while not self._stop.is_set() and (max_runs is None or done < max_runs):
            run = self.client.claim(self.experiment_id, self.name, lease_seconds=self.lease_seconds)
            if run is None:
                if exit_when_idle or (exit_when_done and self._experiment_done()):
                    break
                self._stop.wait(self.poll_seconds)
                continue
            failed_before = self.stats.failed
            self.train(run)
            done += 1
            if self.stats.failed == failed_before:
                failures_in_a_row = 0
                continue
            failures_in_a_row += 1
            if (
                self.max_consecutive_failures is not None
                and failures_in_a_row >= self.max_consecutive_failures
            ):
                self.stats.gave_up = (
                    f"stopped after {failures_in_a_row} failed attempts in a row; the last "
                    f"(run {run.id}): {self._last_failure}"
                )
                log.error("%s", self.stats.gave_up)
                break
            wait = min(self.failure_backoff_seconds * 2 ** (failures_in_a_row - 1), MAX_BACKOFF)
            log.info("waiting %.1f s after %d failed attempt(s) in a row", wait, failures_in_a_row)
            self._stop.wait(wait)
        return self.stats

    def _experiment_done(self) -> bool:
        """No run left to claim now or later. Excluded pending runs are never claimed."""
        for status in ("pending", "running"):
            page = self.client.list_runs(self.experiment_id, status=status, excluded=False, limit=1)
            if page.items:
                return False
        return True

    def train(self, run: schemas.Run) -> None:
        """Train one claimed run under heartbeats and report how it ended."""
        lease_lost = threading.Event()
        finished = threading.Event()
        beating = threading.Thread(
            target=self._heartbeats, args=(run.id, finished, lease_lost), daemon=True
        )
        beating.start()
        context = RunContext(run, self.client, self.name, self._stop, lease_lost)
        try:
            outcome = self.trainer(run, context)
        except KeyboardInterrupt:
            # Ray's cancel, or Ctrl-C without our handlers: hand the run back, then go on up.
            finished.set()
            self.stop()
            if not lease_lost.is_set():
                self._release(run)
            raise
        except httpx.TransportError as exc:
            # The service is unreachable: nothing can be reported; the lease returns the run.
            finished.set()
            log.error("run %s: lost the service (%s); the lease will return the run", run.id, exc)
            return
        except Exception as exc:
            outcome = RunOutcome.failed(_exception_reason(exc))
            log.debug("run %s: training raised", run.id, exc_info=True)
        finally:
            finished.set()
        self._report(run, outcome, lease_lost.is_set())

    def _heartbeats(
        self, run_id: str, finished: threading.Event, lease_lost: threading.Event
    ) -> None:
        while not finished.wait(self.heartbeat_seconds):
            try:
                self.client.heartbeat(run_id, self.name)
            except ConflictError:
                log.error("run %s: the lease was lost; stopping its training", run_id)
                lease_lost.set()
                return
            except Exception:  # the next beat may get through; the lease outlasts two misses
                log.exception("run %s: heartbeat failed", run_id)

    def _release(self, run: schemas.Run) -> None:
        try:
            self.client.release(run.id, self.name)
            self.stats.released += 1
            log.info("run %s released", run.id)
        except (MixoptAPIError, httpx.TransportError) as exc:
            log.error("run %s: could not release it: %s", run.id, exc)

    def _report(self, run: schemas.Run, outcome: RunOutcome, lease_lost: bool) -> None:
        if lease_lost:
            return  # another worker holds the run now: nothing of ours to report
        try:
            metrics = outcome.metrics
            if metrics is not None:
                try:
                    self.client.complete(run.id, metrics, worker=self.name)
                except ValidationError as exc:
                    # Refused (e.g. an objective metric is missing): that attempt failed, with
                    # the server's reason on the run, and is retried or failed as any other.
                    outcome = RunOutcome.failed(f"the run could not complete: {exc.detail}")
                else:
                    self.stats.completed += 1
                    if outcome.after_complete is not None:
                        outcome.after_complete()
                    log.info("run %s completed: %s", run.id, dict(metrics))
                    return
            if outcome.failure is not None:
                self.client.fail(run.id, outcome.failure[-4000:], worker=self.name)
                self.stats.failed += 1
                self._last_failure = (
                    outcome.failure.splitlines()[0][:300] if outcome.failure else ""
                )
                log.warning("run %s failed: %s", run.id, outcome.failure)
            else:
                self._release(run)
        except (MixoptAPIError, httpx.TransportError) as exc:
            log.error("run %s: could not report the outcome: %s", run.id, exc)


def _exception_reason(exc: BaseException) -> str:
    """The exception and the last frames of its traceback: enough to see where it broke."""
    frames = traceback.format_tb(exc.__traceback__)[-3:]
    return f"{type(exc).__name__}: {exc}\n{''.join(frames)}".strip()


def default_name() -> str:
    import socket

    return f"{socket.gethostname()}/{os.getpid()}"


# --- streaming metric points -------------------------------------------------------------------


class MetricStream:
    """Metric points on their way to the service, sent from the training thread in batches:
    when ``flush_points`` are buffered or ``flush_seconds`` passed since the last send.

    A failed send keeps its points for the next one (``close`` raises instead: the run must not
    complete without them). The service keeps one value per (name, step): when a retried or
    resumed attempt reports a step an earlier attempt already stored with another value (409),
    the stored points are read once and skipped from then on (the earlier value stays). Once
    the lease is lost nothing is sent: the run belongs to another worker.
    """

    def __init__(
        self,
        client: MixoptClient,
        run_id: str,
        *,
        lease_lost: Callable[[], bool] = lambda: False,
        flush_seconds: float = 1.5,
        flush_points: int = 1000,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.lease_lost = lease_lost
        self.flush_seconds = flush_seconds
        self.flush_points = flush_points
        self.sent = 0
        self.dropped = 0
        # Keyed by (name, step): a step reported twice (a resume) is sent once, the last value.
        self._buffer: dict[tuple[str, int], float] = {}
        self._stored: set[tuple[str, int]] | None = None
        self._last_send = time.monotonic()

    def add(self, points: Iterable[tuple[str, int, float]]) -> None:
        """The ``report`` callback of the trainer."""
        for name, step, value in points:
            if not math.isfinite(value):
                # The service stores finite numbers only; one bad point must not sink the batch.
                if not self.dropped:
                    log.warning("run %s: dropped non-finite %s at %d", self.run_id, name, step)
                self.dropped += 1
                continue
            self._buffer[(str(name), int(step))] = float(value)
        due = time.monotonic() - self._last_send >= self.flush_seconds
        if len(self._buffer) >= self.flush_points or (due and self._buffer):
            self.flush()

    def flush(self) -> None:
        """Send what is buffered; on failure keep it for the next send."""
        try:
            self._send()
        except (MixoptAPIError, httpx.TransportError) as exc:
            log.warning("run %s: metric points kept for later: %s", self.run_id, exc)
        self._last_send = time.monotonic()

    def close(self) -> None:
        """The final send; raises if the points cannot be stored."""
        self._send()

    def _send(self) -> None:
        if self.lease_lost():
            self._buffer.clear()
            return
        if not self._buffer:
            return
        batch = self._unstored()
        try:
            if batch:
                self.client.append_metrics(self.run_id, batch)
        except ConflictError:
            self._stored = {(p.name, p.step) for p in self.client.iter_metrics(self.run_id)}
            log.info("run %s: steps stored by an earlier attempt keep its values", self.run_id)
            batch = self._unstored()
            if batch:
                self.client.append_metrics(self.run_id, batch)
        self.sent += len(batch)
        self._buffer.clear()

    def _unstored(self) -> list[tuple[str, int, float]]:
        stored = self._stored or set()
        return [(n, s, v) for (n, s), v in self._buffer.items() if (n, s) not in stored]


# --- the built-in proxy trainer ----------------------------------------------------------------


class TrainResultLike(Protocol):
    @property
    def metrics(self) -> Mapping[str, float]: ...

    @property
    def stopped(self) -> bool: ...


class TrainFunction(Protocol):
    """The signature of ``proxy_trainer.train.train`` (tests pass fakes)."""

    def __call__(
        self,
        corpus: Corpus,
        weights: dict[str, float],
        proxy_config: ProxyConfig,
        /,
        *,
        quadmix_params: dict[str, Any] | None = None,
        report: Callable[[list[tuple[str, int, float]]], None] | None = None,
        checkpoint: Path | None = None,
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> TrainResultLike: ...


def run_seed(run_id: str, base_seed: int) -> int:
    """A 31-bit seed from the config's seed and the run id: distinct per run, the same for
    every attempt of a run."""
    digest = hashlib.sha256(f"{base_seed}:{run_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF


def _merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def load_proxy_config(
    preset_name: str | None = None,
    config_file: Path | None = None,
    *,
    steps: int | None = None,
    device: str | None = None,
    threads: int | None = None,
) -> ProxyConfig:
    """The worker's proxy config: the preset (default ``tiny``), the JSON file merged over it
    (only the fields it gives), then the flags. Raises ``ValueError`` with what is wrong."""
    from proxy_trainer.config import ProxyConfig, preset

    base = preset(preset_name or "tiny").to_dict()
    if config_file is not None:
        try:
            raw = json.loads(config_file.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read the proxy config {config_file}: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{config_file} must hold a JSON object (model, train)")
        base = _merged(base, raw)
    flags = {"steps": steps, "device": device, "threads": threads}
    base = _merged(base, {"train": {k: v for k, v in flags.items() if v is not None}})
    try:
        return ProxyConfig.from_dict(base)
    except TypeError as exc:  # a section that is not an object
        raise ValueError(f"invalid proxy config: {exc}") from None


def run_proxy_config(worker_config: ProxyConfig, run: schemas.Run) -> ProxyConfig:
    """What ``run`` trains with: its ``params["proxy"]`` over the worker's config (machine
    settings stay the worker's), seeded per run (see the module doc)."""
    from proxy_trainer.config import ProxyConfig

    overrides = run.params.get("proxy") or {}
    if not isinstance(overrides, Mapping):
        raise ValueError('params["proxy"] must be an object: {"model": {...}, "train": {...}}')
    train_overrides = overrides.get("train") or {}
    if not isinstance(train_overrides, Mapping):
        raise ValueError('params["proxy"]["train"] must be an object')
    machine = {k: getattr(worker_config.train, k) for k in MACHINE_SETTINGS}
    config = ProxyConfig.from_dict(
        _merged(_merged(worker_config.to_dict(), overrides), {"train": machine})
    )
    if "seed" in train_overrides:
        return config
    return config.with_train(seed=run_seed(run.id, config.train.seed))


def checkpoint_name(run: schemas.Run, config: ProxyConfig) -> str:
    """``run-<id>-<hash of what it trains>.pt``: a worker with another config (more steps, a
    wider model) starts its own file instead of refusing to resume a foreign one."""
    from proxy_trainer.train import RESUMABLE_CHANGES

    train = {k: v for k, v in config.train.to_dict().items() if k not in RESUMABLE_CHANGES}
    what = json.dumps({"model": config.model.to_dict(), "train": train}, sort_keys=True)
    return f"run-{run.id}-{hashlib.sha256(what.encode()).hexdigest()[:12]}.pt"


def quadmix_params(params: Mapping[str, Any]) -> dict[str, Any] | None:
    """A QuaDMix run's sampling function, or None for a plain mixture."""
    present = [k for k in QUADMIX_KEYS if k in params]
    if not present:
        return None
    if len(present) != len(QUADMIX_KEYS):
        missing = sorted(set(QUADMIX_KEYS) - set(present))
        raise ValueError(f"the run's QuaDMix params lack {', '.join(missing)}")
    return {k: params[k] for k in QUADMIX_KEYS}


def _import_train() -> TrainFunction:
    try:
        from proxy_trainer.train import train
    except ImportError as exc:
        raise RuntimeError(
            f"the built-in trainer needs torch (pip install 'mixopt[trainer]'): {exc}"
        ) from None
    return train


class ProxyRunTrainer:
    """Trains each run in-process on ``corpus`` with ``proxy_trainer.train.train``."""

    def __init__(
        self,
        corpus: Corpus,
        config: ProxyConfig,
        *,
        checkpoint_dir: Path | None = None,
        train: TrainFunction | None = None,
        flush_seconds: float = 1.5,
        flush_points: int = 1000,
    ) -> None:
        self.corpus = corpus
        self.config = config
        self.checkpoint_dir = checkpoint_dir
        self.train_function = train or _import_train()
        self.flush_seconds = flush_seconds
        self.flush_points = flush_points

    def check_domains(self, experiment: schemas.Experiment) -> None:
        """Refuse an experiment whose domains the corpus lacks, before claiming: every one of
        its runs would fail."""
        missing = [d.name for d in experiment.domains if d.name not in self.corpus.domains]
        if missing:
            from proxy_trainer.corpus import CorpusError

            raise CorpusError(
                f"the corpus at {self.corpus.root} lacks the experiment's domains "
                f"{', '.join(missing)}; it has {', '.join(self.corpus.domains)}"
            )

    def __call__(self, run: schemas.Run, context: RunContext) -> RunOutcome:
        config = run_proxy_config(self.config, run)
        sampling = quadmix_params(run.params)
        stream = MetricStream(
            context.client,
            run.id,
            lease_lost=lambda: context.lease_lost,
            flush_seconds=self.flush_seconds,
            flush_points=self.flush_points,
        )
        checkpoint = None
        if self.checkpoint_dir is not None:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            checkpoint = self.checkpoint_dir / checkpoint_name(run, config)
        log.info(
            "run %s: training %s (seed %d, %d steps)",
            run.id, run.weights, config.train.seed, config.train.steps,
        )  # fmt: skip
        try:
            result = self.train_function(
                self.corpus,
                dict(run.weights),
                config,
                quadmix_params=sampling,
                report=stream.add,
                checkpoint=checkpoint,
                should_stop=context.should_stop,
                progress=context.progress,
            )
        except BaseException:
            stream.flush()  # the points of a failed attempt are still worth keeping
            raise
        if result.stopped:
            stream.flush()
            return RunOutcome.stopped()
        stream.close()
        metrics = dict(result.metrics)
        bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        if bad:
            return RunOutcome.failed(f"training diverged: non-finite {', '.join(bad)}")
        if checkpoint is None:
            return RunOutcome.completed(metrics)
        return RunOutcome.completed(metrics, lambda: checkpoint.unlink(missing_ok=True))


# --- options shared by the CLI worker and the launcher -----------------------------------------


@dataclass(frozen=True)
class WorkerOptions:
    """How to run a worker: exactly one of ``command`` and ``corpus``; the proxy options apply
    to ``corpus`` only. Plain, picklable values: the launcher ships them to subprocesses
    (``to_argv``) and Ray tasks."""

    command: str | None = None
    corpus: str | Path | None = None
    preset: str | None = None
    proxy_config: str | Path | None = None
    steps: int | None = None
    device: str | None = None
    threads: int | None = None
    checkpoint_dir: str | Path | None = None
    name: str | None = None
    lease_seconds: int = 600
    heartbeat_seconds: float | None = None
    poll_seconds: float = 30.0
    max_runs: int | None = None
    exit_when_idle: bool = False
    exit_when_done: bool = False
    workdir: str | Path | None = None
    shell: bool = False
    max_consecutive_failures: int | None = 5
    failure_backoff_seconds: float = 5.0

    def check(self) -> None:
        """Raise ``ValueError`` saying what is inconsistent."""
        if (self.command is None) == (self.corpus is None):
            raise ValueError(
                "give exactly one of --command (a training command per run) and --corpus "
                "(train in-process on a corpus directory)"
            )
        if self.command is not None:
            if not self.command.strip():
                raise ValueError("--command is empty: give the command that trains one run")
            given = [
                flag
                for flag, value in (
                    ("--preset", self.preset),
                    ("--proxy-config", self.proxy_config),
                    ("--steps", self.steps),
                    ("--device", self.device),
                    ("--threads", self.threads),
                    ("--checkpoint-dir", self.checkpoint_dir),
                )
                if value is not None
            ]
            if given:
                raise ValueError(f"{', '.join(given)} apply to --corpus only, not --command")
        elif self.workdir is not None or self.shell:
            raise ValueError("--workdir and --shell apply to --command only, not --corpus")
        if self.workdir is not None and not Path(self.workdir).is_dir():
            raise ValueError(f"--workdir {self.workdir} is not a directory")
        if not 10 <= self.lease_seconds <= 86400:
            raise ValueError("--lease-seconds must be within 10..86400")
        if self.max_consecutive_failures is not None and self.max_consecutive_failures < 1:
            raise ValueError("--max-failures must be at least 1 (0: never stop)")

    def to_argv(self) -> list[str]:
        """These options as ``mixopt worker`` flags."""
        argv: list[str] = []
        for flag, value in (
            ("--command", self.command),
            ("--corpus", self.corpus),
            ("--preset", self.preset),
            ("--proxy-config", self.proxy_config),
            ("--steps", self.steps),
            ("--device", self.device),
            ("--threads", self.threads),
            ("--checkpoint-dir", self.checkpoint_dir),
            ("--name", self.name),
            ("--lease-seconds", self.lease_seconds),
            ("--heartbeat-seconds", self.heartbeat_seconds),
            ("--poll-seconds", self.poll_seconds),
            ("--max-runs", self.max_runs),
            ("--workdir", self.workdir),
            ("--max-failures", self.max_consecutive_failures or 0),
            ("--failure-backoff", self.failure_backoff_seconds),
        ):
            if value is not None:
                argv += [flag, str(value)]
        if self.shell:
            argv.append("--shell")
        if self.exit_when_idle:
            argv.append("--exit-when-idle")
        if self.exit_when_done:
            argv.append("--exit-when-done")
        return argv


def build_worker(
    client: MixoptClient,
    experiment_id: str,
    options: WorkerOptions,
    *,
    train: TrainFunction | None = None,
) -> Worker:
    """The worker ``options`` describe. Raises ``ValueError`` (inconsistent options or proxy
    config), ``CorpusError`` (no usable corpus) or ``RuntimeError`` (torch missing) before
    claiming anything; ``train`` replaces ``proxy_trainer.train.train`` (tests)."""
    options.check()
    trainer: RunTrainer
    if options.command is not None:
        trainer = CommandTrainer(options.command, workdir=options.workdir, shell=options.shell)
    else:
        assert options.corpus is not None
        from proxy_trainer.corpus import Corpus

        config = load_proxy_config(
            options.preset,
            Path(options.proxy_config) if options.proxy_config is not None else None,
            steps=options.steps,
            device=options.device,
            threads=options.threads,
        )
        proxy = ProxyRunTrainer(
            Corpus.open(options.corpus),
            config,
            checkpoint_dir=Path(options.checkpoint_dir) if options.checkpoint_dir else None,
            train=train,
        )
        proxy.check_domains(client.get_experiment(experiment_id))
        trainer = proxy
    return Worker(
        client,
        experiment_id,
        trainer,
        name=options.name or default_name(),
        lease_seconds=options.lease_seconds,
        heartbeat_seconds=options.heartbeat_seconds,
        poll_seconds=options.poll_seconds,
        failure_backoff_seconds=options.failure_backoff_seconds,
        max_consecutive_failures=options.max_consecutive_failures,
    )
