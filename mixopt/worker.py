"""A queue worker that trains proxy runs with any command: ``mixopt worker EXPERIMENT --command``.

It claims the oldest pending run, keeps the lease alive with heartbeats while the command runs,
and reports the outcome: completed with the metrics the command wrote, failed (retried by the
service up to ``max_attempts``) when the command exits non-zero, released when the worker is
told to stop (SIGTERM, SIGINT), so a preempted node hands its run straight back.

The command learns its run from the environment:
- ``MIXOPT_RUN_ID``, ``MIXOPT_EXPERIMENT_ID``
- ``MIXOPT_WEIGHTS``: the mixture as JSON, ``{"domain": weight, ...}``
- ``MIXOPT_RUN_FILE``: the whole run (weights, params, tags) as a JSON file
- ``MIXOPT_METRICS_FILE``: where to write the final metrics, a JSON object name -> number
- ``MIXOPT_URL``, ``MIXOPT_TOKEN``: to post metric points along the way (``mixopt.client``)

Only ``mixopt.client`` is used: a worker needs no database and no server code.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from mixopt import schemas
from mixopt.client import ConflictError, MixoptAPIError, MixoptClient

__all__ = ["Worker", "WorkerStats"]

log = logging.getLogger("mixopt.worker")


@dataclass
class WorkerStats:
    completed: int = 0
    failed: int = 0
    released: int = 0


class Worker:
    def __init__(
        self,
        client: MixoptClient,
        experiment_id: str,
        command: str,
        *,
        name: str,
        lease_seconds: int = 600,
        heartbeat_seconds: float | None = None,
        poll_seconds: float = 30.0,
    ) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.argv = shlex.split(command)
        if not self.argv:
            raise ValueError("the command is empty")
        self.name = name
        self.lease_seconds = lease_seconds
        # Three heartbeats per lease: one lost request does not cost the run.
        self.heartbeat_seconds = heartbeat_seconds or lease_seconds / 3
        self.poll_seconds = poll_seconds
        self.stats = WorkerStats()
        self._stop = threading.Event()

    def stop(self) -> None:
        """Finish as soon as possible: the run in progress is released, not failed."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            log.warning("signal %d: releasing the current run and stopping", signum)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self, *, max_runs: int | None = None, exit_when_idle: bool = False) -> WorkerStats:
        done = 0
        while not self._stop.is_set() and (max_runs is None or done < max_runs):
            run = self.client.claim(self.experiment_id, self.name, lease_seconds=self.lease_seconds)
            if run is None:
                if exit_when_idle:
                    break
                self._stop.wait(self.poll_seconds)
                continue
            self.train(run)
            done += 1
        return self.stats

    def train(self, run: schemas.Run) -> None:
        """Run the command for one claimed run and report how it ended."""
        lease_lost = threading.Event()
        with tempfile.TemporaryDirectory(prefix=f"mixopt-run-{run.id}-") as workdir:
            metrics_file = Path(workdir) / "metrics.json"
            run_file = Path(workdir) / "run.json"
            run_file.write_text(run.model_dump_json(indent=2))
            env = {
                **os.environ,
                "MIXOPT_RUN_ID": run.id,
                "MIXOPT_EXPERIMENT_ID": run.experiment_id,
                "MIXOPT_WEIGHTS": json.dumps(run.weights),
                "MIXOPT_RUN_FILE": str(run_file),
                "MIXOPT_METRICS_FILE": str(metrics_file),
                "MIXOPT_URL": self.client.base_url,
            }
            if self.client.token:
                env["MIXOPT_TOKEN"] = self.client.token
            log.info("run %s: %s", run.id, " ".join(self.argv))
            process = subprocess.Popen(
                self.argv, env=env, cwd=workdir, stderr=subprocess.PIPE, text=True
            )
            stderr_tail: list[str] = []
            reader = threading.Thread(target=_keep_tail, args=(process, stderr_tail), daemon=True)
            reader.start()
            beating = threading.Thread(
                target=self._heartbeats, args=(run.id, process, lease_lost), daemon=True
            )
            beating.start()
            while process.poll() is None:
                if self._stop.wait(0.2) or lease_lost.is_set():
                    _terminate(process)
            reader.join(timeout=10)
            code = process.returncode
            self._report(run, code, metrics_file, stderr_tail, lease_lost.is_set())

    def _heartbeats(
        self, run_id: str, process: subprocess.Popen[str], lease_lost: threading.Event
    ) -> None:
        while not _wait_exit(process, self.heartbeat_seconds):
            try:
                self.client.heartbeat(run_id, self.name)
            except ConflictError:
                log.error("run %s: the lease was lost; stopping the command", run_id)
                lease_lost.set()
                return
            except Exception:  # the next beat may get through; the lease outlasts two misses
                log.exception("run %s: heartbeat failed", run_id)

    def _report(
        self,
        run: schemas.Run,
        code: int | None,
        metrics_file: Path,
        stderr_tail: list[str],
        lease_lost: bool,
    ) -> None:
        try:
            if lease_lost:
                return  # another worker holds the run now: nothing of ours to report
            if self._stop.is_set() and code != 0:
                self.client.release(run.id, self.name)
                self.stats.released += 1
                return
            if code == 0:
                metrics, problem = _read_metrics(metrics_file)
                if problem is None:
                    self.client.complete(run.id, metrics, worker=self.name)
                    self.stats.completed += 1
                    log.info("run %s completed: %s", run.id, metrics)
                    return
                reason = problem
            else:
                reason = f"exit code {code}: {''.join(stderr_tail)[-2000:].strip()}"
            self.client.fail(run.id, reason, worker=self.name)
            self.stats.failed += 1
            log.warning("run %s failed: %s", run.id, reason)
        except MixoptAPIError as exc:
            log.error("run %s: could not report the outcome: %s", run.id, exc)


def _read_metrics(path: Path) -> tuple[dict[str, float], str | None]:
    """The command's final metrics, or the reason they cannot be used."""
    if not path.exists():
        return {}, f"the command exited 0 but wrote no metrics to {path.name}"
    try:
        raw = json.loads(path.read_text())
    except ValueError as exc:
        return {}, f"{path.name} is not JSON: {exc}"
    if not isinstance(raw, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        for v in raw.values()
    ):
        return {}, f"{path.name} must be a JSON object of finite numbers"
    return {str(k): float(v) for k, v in raw.items()}, None


def _keep_tail(process: subprocess.Popen[str], tail: list[str], keep: int = 50) -> None:
    assert process.stderr is not None
    for line in process.stderr:
        tail.append(line)
        del tail[:-keep]


def _wait_exit(process: subprocess.Popen[str], seconds: float) -> bool:
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


def _terminate(process: subprocess.Popen[str], grace: float = 10.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    if not _wait_exit(process, grace):
        process.kill()
        process.wait()


def default_name() -> str:
    import socket

    return f"{socket.gethostname()}/{os.getpid()}"
