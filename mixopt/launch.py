"""Run N queue workers on one experiment until it is drained: ``mixopt launch`` and ``launch()``.

The service keeps the queue and the leases, so the launcher only starts workers and waits: each
worker claims, trains and reports on its own (``mixopt.worker``), and stops once the experiment
has no run pending or running (``--exit-when-done``: a running run may still fail and come back
for a retry, or its lease expire after its worker died, so the workers wait for those).

Backends:

- ``local``: N ``mixopt worker`` subprocesses of this Python (URL and token in their
  environment, not on their command line), ``max(1, cpus // N)`` torch threads each unless
  given; their output goes to ``log_dir``. Ctrl-C or SIGTERM terminates them, which makes each
  release its run.
- ``ray``: N Ray tasks (``num_cpus`` = their torch threads, a GPU each with ``--device cuda``),
  each running a worker in-process; on a cluster (``ray_address``) or on a local Ray instance.
  A task lost with its node needs no bookkeeping here: its run's lease expires and the service
  returns the run to the queue, where the other workers (or Ray's retry of the task) take it.

Ray is imported only by the ``ray`` backend (extra ``mixopt[ray]``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from mixopt import schemas
from mixopt.client import MixoptClient
from mixopt.worker import WorkerOptions, WorkerStats, build_worker, default_name

__all__ = ["Backend", "LaunchReport", "Progress", "WorkerOptions", "launch"]

log = logging.getLogger("mixopt.launch")

Backend = Literal["local", "ray"]
BACKENDS: tuple[Backend, ...] = ("local", "ray")
Progress = Callable[[int, int], None]
"""Called every poll with (finished runs, all runs) of the experiment: completed + failed."""
STOP_GRACE_SECONDS = 30.0
"""How long stopped workers get to release their runs before they are killed."""


@dataclass(frozen=True)
class LaunchReport:
    """What the workers did (their own counts: a worker killed outright reports nothing, and
    appears in ``errors``) and the experiment's run counts at the end."""

    backend: Backend
    workers: int
    completed: int
    failed: int
    """Failed attempts (the service retries a run until ``max_attempts``)."""
    released: int
    seconds: float
    counts: schemas.RunCounts
    errors: tuple[str, ...] = ()
    """Workers that ended abnormally: exit status or exception, and their last output."""
    log_dir: Path | None = None

    @property
    def runs_per_minute(self) -> float:
        return self.completed / (self.seconds / 60) if self.seconds > 0 else 0.0

    def summary_lines(self) -> list[str]:
        lines = [
            f"{self.workers} {self.backend} workers: {self.completed} completed, "
            f"{self.failed} failed, {self.released} released in {self.seconds:.1f} s "
            f"({self.runs_per_minute:.1f} runs/min)",
            f"experiment: {self.counts.completed} completed, {self.counts.failed} failed, "
            f"{self.counts.pending} pending, {self.counts.running} running",
        ]
        lines += [f"worker error: {error}" for error in self.errors]
        if self.log_dir is not None:
            lines.append(f"worker logs: {self.log_dir}")
        return lines


def launch(
    url: str,
    token: str | None,
    experiment_id: str,
    *,
    workers: int,
    backend: Backend = "local",
    options: WorkerOptions,
    ray_address: str | None = None,
    progress: Progress | None = None,
    poll_seconds: float = 1.0,
    log_dir: Path | None = None,
) -> LaunchReport:
    """Run ``workers`` workers with ``options`` until the experiment has no run pending or
    running. Raises ``ValueError`` for bad options and ``RuntimeError`` without Ray; on
    KeyboardInterrupt the workers release their runs and the interrupt goes on up."""
    if workers < 1:
        raise ValueError("workers must be >= 1")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    options = replace(options, exit_when_idle=False, exit_when_done=True)
    options.check()
    started = time.monotonic()
    with MixoptClient(url, token) as client:
        client.get_experiment(experiment_id)  # a wrong id or token fails here, not N times

        def poll() -> None:
            if progress is not None:
                counts = client.get_experiment(experiment_id).counts
                progress(_finished(counts), _total(counts))

        if backend == "local":
            stats, errors, logs = _run_local(
                url, token, experiment_id, workers, options, poll, poll_seconds, log_dir
            )
        else:
            stats, errors = _run_ray(
                url, token, experiment_id, workers, options, ray_address, poll, poll_seconds
            )
            logs = None
        poll()
        counts = client.get_experiment(experiment_id).counts
    return LaunchReport(
        backend=backend,
        workers=workers,
        completed=sum(s.completed for s in stats),
        failed=sum(s.failed for s in stats),
        released=sum(s.released for s in stats),
        seconds=time.monotonic() - started,
        counts=counts,
        errors=tuple(errors),
        log_dir=logs,
    )


def _finished(counts: schemas.RunCounts) -> int:
    return counts.completed + counts.failed


def _total(counts: schemas.RunCounts) -> int:
    return counts.pending + counts.running + counts.completed + counts.failed


def available_cpus() -> int:
    """CPUs this process may use (its affinity mask, e.g. under Slurm or a container)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _per_worker(options: WorkerOptions, cpus: int, workers: int, index: int) -> WorkerOptions:
    """One worker's options: the CPUs shared out (built-in trainer), a distinct name."""
    threads = options.threads
    if threads is None and options.corpus is not None:
        threads = max(1, cpus // workers)
    name = f"{options.name}-{index}" if options.name else None
    return replace(options, threads=threads, name=name)


# --- local subprocesses ------------------------------------------------------------------------


def _run_local(
    url: str,
    token: str | None,
    experiment_id: str,
    workers: int,
    options: WorkerOptions,
    poll: Callable[[], None],
    poll_seconds: float,
    log_dir: Path | None,
) -> tuple[list[WorkerStats], list[str], Path]:
    logs = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="mixopt-launch-"))
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MIXOPT_URL": url}
    if token:
        env["MIXOPT_TOKEN"] = token
    cpus = available_cpus()
    children: list[tuple[subprocess.Popen[bytes], Path, Path]] = []
    try:
        for index in range(workers):
            stats_file = logs / f"worker-{index}.stats.json"
            log_file = logs / f"worker-{index}.log"
            stats_file.unlink(missing_ok=True)
            argv = [
                sys.executable,
                "-m",
                "mixopt.cli",
                "worker",
                experiment_id,
                *_per_worker(options, cpus, workers, index).to_argv(),
                "--stats-file",
                str(stats_file),
            ]
            with log_file.open("ab") as out:  # the child keeps its own copy of the descriptor
                process = subprocess.Popen(
                    argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
                )
            children.append((process, stats_file, log_file))
        while any(process.poll() is None for process, _, _ in children):
            poll()
            _wait_any([process for process, _, _ in children], poll_seconds)
    except BaseException:  # KeyboardInterrupt, SIGTERM turned into one, or a failed poll
        _stop_children([process for process, _, _ in children])
        raise
    stats: list[WorkerStats] = []
    errors: list[str] = []
    for index, (process, stats_file, log_file) in enumerate(children):
        if stats_file.exists():
            stats.append(WorkerStats(**_read_json(stats_file)))
        if process.returncode != 0:
            errors.append(
                f"worker {index} exited with status {process.returncode}: {_tail(log_file)}"
            )
    return stats, errors, logs


def _wait_any(processes: Sequence[subprocess.Popen[bytes]], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(p.poll() is not None for p in processes):
            return
        time.sleep(min(0.1, seconds))


def _stop_children(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM (each worker releases its run), then SIGKILL after the grace period."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:].strip()
    except OSError:
        return ""


# --- Ray ---------------------------------------------------------------------------------------


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RuntimeError(
            "the ray backend needs Ray: pip install 'mixopt[ray]' (or use --backend local)"
        ) from None
    return ray


def _ray_worker(
    url: str, token: str | None, experiment_id: str, options: WorkerOptions, index: int
) -> WorkerStats:
    """A Ray task: one worker, in-process, until the experiment is drained."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    if options.name is None:
        options = replace(options, name=f"{default_name()}/ray{index}")
    with MixoptClient(url, token) as client:
        worker = build_worker(client, experiment_id, options)
        return worker.run(max_runs=options.max_runs, exit_when_done=True)


def _run_ray(
    url: str,
    token: str | None,
    experiment_id: str,
    workers: int,
    options: WorkerOptions,
    address: str | None,
    poll: Callable[[], None],
    poll_seconds: float,
) -> tuple[list[WorkerStats], list[str]]:
    ray = _import_ray()
    owned = not ray.is_initialized()
    if owned:
        if address is not None:
            ray.init(address=address)
        else:
            ray.init(num_cpus=available_cpus())
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        gpus = 1 if (options.device or "").startswith("cuda") else 0
        refs: list[Any] = []
        for index in range(workers):
            mine = _per_worker(options, cpus, workers, index)
            task = ray.remote(num_cpus=mine.threads or 1, num_gpus=gpus)(_ray_worker)
            refs.append(task.remote(url, token, experiment_id, mine, index))
        waiting = list(refs)
        try:
            while waiting:
                poll()
                _, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=poll_seconds)
        except BaseException:
            # KeyboardInterrupt inside each task: its worker releases its run.
            for ref in waiting:
                ray.cancel(ref)
            ray.wait(waiting, num_returns=len(waiting), timeout=STOP_GRACE_SECONDS)
            raise
        stats: list[WorkerStats] = []
        errors: list[str] = []
        for index, ref in enumerate(refs):
            try:
                stats.append(ray.get(ref))
            except Exception as exc:  # the task raised, or Ray gave up on it
                errors.append(f"worker {index}: {type(exc).__name__}: {exc}"[-2000:])
        return stats, errors
    finally:
        if owned:
            ray.shutdown()
