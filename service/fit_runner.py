"""Fits off the request path: a bounded pool of worker processes runs them.

A fit cross-validates regressors and searches a recommendation: seconds to minutes of CPU. In the
server process it would hold the GIL and slow every other request (weights polls, claims), so it
runs in a worker process. The parent validates, stores the running fit and, once the worker
answers, its result; the worker gets plain data (the mixer with its config, the space, the
history) and returns the fit's stored form (``NewFit``). It never touches the database.

Workers start from a ``forkserver`` (``spawn`` where there is none), never by forking the server:
the server has threads and open database connections. The fork server preloads this module (the
mixers, numpy, scikit-learn, LightGBM), so each new worker is a cheap fork of a clean process.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import secrets
import signal
import socket
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from mixers import DomainSpace, Observation
from mixers.base import Direction
from mixers.offline.base import OfflineMixer
from mixers.persistence import FIT_FORMAT, dump_fit
from service.convert import fit_report, recommendation_out
from service.store.base import FitRecord, NewFit, Store

__all__ = ["RESTART_REASON", "FitJob", "FitRunner", "compute_fit"]

log = logging.getLogger("mixopt.service")

RESTART_REASON = "interrupted by a server restart"


@dataclass(frozen=True)
class FitJob:
    """What a worker needs to fit: plain, picklable data (the mixer is its class and config)."""

    fit_id: str
    mixer: OfflineMixer[Any]
    space: DomainSpace
    history: tuple[Observation, ...]
    model: str
    direction: Direction
    metric_weights: Mapping[str, float] | None = None
    """The objective's metrics and weights (``auto`` may fit them one by one)."""


def compute_fit(job: FitJob, stage: Callable[[str], None]) -> NewFit:
    """Fit, search the recommendation and encode the model; ``stage`` hears what it does."""
    mixer, space = job.mixer, job.space
    stage(f"cross-validating {job.model}")
    fit = mixer.fit(
        space, job.history, job.model, direction=job.direction, metric_weights=job.metric_weights
    )
    stage(f"searching the recommendation of {fit.model} ({fit.n_runs} runs)")
    rng = np.random.default_rng([mixer.config.seed or 0, fit.n_runs])
    recommendation = recommendation_out(space, mixer.recommend(space, fit, rng, job.history))
    try:
        data: bytes | None = dump_fit(fit)
    except TypeError as exc:  # a plug-in regressor without to_state()
        log.warning("fit %s is stored without its model: %s", job.fit_id, exc)
        data = None
    return NewFit(
        model=fit.model,
        requested=job.model,
        n_runs=fit.n_runs,
        report=fit_report(fit),
        recommendation=recommendation.model_dump(mode="json", exclude={"fit_id", "run_id"}),
        model_data=data,
        model_format=None if data is None else FIT_FORMAT,
    )


# --- in the worker process ---

_progress: Any = None  # the pool's SimpleQueue of (fit id, stage), set by _init_worker


def _init_worker(progress: Any, niceness: int) -> None:
    # Ctrl-C on the server's terminal reaches the workers too: the server shuts them down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A fit is background work: on a machine with few cores the scheduler should run the
    # server's requests (weights polls, claims) first and give the fit what is left.
    if niceness and hasattr(os, "nice"):
        os.nice(niceness)
    global _progress
    _progress = progress


def _report_stage(fit_id: str, stage: str) -> None:
    if _progress is not None:
        _progress.put((fit_id, stage))


def _run_in_worker(job: FitJob) -> NewFit:
    return compute_fit(job, lambda stage: _report_stage(job.fit_id, stage))


# --- in the server process ---


def _context() -> multiprocessing.context.BaseContext:
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        # Takes effect when the fork server starts (once per server process).
        context.set_forkserver_preload([__name__])
    return context


class FitRunner:
    """Runs this server instance's fits and keeps them honest in the store.

    Each instance has a random id, the ``owner`` of the fits it starts; while they run it beats
    their ``heartbeat_at`` every ``heartbeat_seconds``. A running fit is failed ("interrupted by
    a server restart") when its owner shuts down (here, at once) or when its heartbeat is older
    than ``stale_seconds`` (by any replica's sweep, at its start and with every beat: its owner
    died without shutting down). Replicas on one database never fail each other's live fits,
    which are beaten far more often than they go stale; a restart therefore fails a crashed
    predecessor's fits at most ``stale_seconds`` later.

    ``niceness`` lowers the worker processes' CPU priority (the server passes its
    ``fit_niceness``); 0 leaves it as the server's.

    ``workers=0``, or a runner that was never started (an app whose lifespan did not run), fits
    in the server's thread pool instead.
    """

    def __init__(
        self,
        store: Store,
        workers: int,
        *,
        heartbeat_seconds: float = 5.0,
        stale_seconds: float = 60.0,
        niceness: int = 0,
    ) -> None:
        self.store = store
        self.workers = workers
        self.niceness = niceness
        self.heartbeat_seconds = heartbeat_seconds
        self.stale_seconds = stale_seconds
        self.instance = f"{socket.gethostname()[:32]}:{os.getpid()}:{secrets.token_hex(6)}"
        self._stages: dict[str, str | None] = {}  # this instance's running fits
        self._tasks: set[asyncio.Task[FitRecord]] = set()
        self._executor: ProcessPoolExecutor | None = None
        self._progress: Any = None
        self._drain: threading.Thread | None = None
        self._beat: asyncio.Task[None] | None = None

    def stage(self, fit_id: str) -> str | None:
        """What a fit of this instance is doing now (None if not running here)."""
        return self._stages.get(fit_id)

    async def start(self) -> None:
        try:
            failed = await run_in_threadpool(
                self.store.fail_abandoned_fits, RESTART_REASON, stale_seconds=self.stale_seconds
            )
        except Exception:  # e.g. a schema not migrated yet (/readyz says so): swept later
            log.exception("could not sweep the fits of stopped servers; retrying later")
        else:
            if failed:
                log.warning("failed %d fits interrupted by a restart: %s", len(failed), failed)
        if self.workers > 0:
            self._start_pool()
        self._beat = asyncio.create_task(self._beat_forever())

    def _start_pool(self) -> None:
        context = _context()
        if context.get_start_method() == "forkserver":
            # Started now, in the background (it imports the mixers: seconds), so that the
            # first fit does not wait for it; worker processes start at the first fits.
            from multiprocessing import forkserver

            threading.Thread(target=forkserver.ensure_running, daemon=True).start()
        self._progress = context.SimpleQueue()
        self._executor = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(self._progress, self.niceness),
        )
        self._drain = threading.Thread(
            target=self._drain_stages, args=(self._progress,), name="fit-progress", daemon=True
        )
        self._drain.start()

    def _drain_stages(self, progress: Any) -> None:
        while (message := progress.get()) is not None:
            fit_id, stage = message
            if fit_id in self._stages:
                self._stages[fit_id] = stage

    async def stop(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
        executor, self._executor = self._executor, None
        if executor is not None:
            _terminate(executor)
        for task in list(self._tasks):
            task.cancel()
        if self._progress is not None:
            self._progress.put(None)
            self._progress = None
        try:
            await run_in_threadpool(
                self.store.fail_abandoned_fits,
                RESTART_REASON,
                stale_seconds=self.stale_seconds,
                owner=self.instance,
            )
        except Exception:
            log.exception("could not mark this server's running fits failed")

    def launch(self, record: FitRecord, job: FitJob) -> asyncio.Task[FitRecord]:
        """Run ``job`` (of the running fit ``record``) and store how it ended: the task's result
        is the completed fit; it raises what the fit raised, after storing it as failed."""
        self._stages[record.id] = "queued"
        task = asyncio.get_running_loop().create_task(self._run(record, job))
        self._tasks.add(task)
        task.add_done_callback(_forget(self._tasks))
        return task

    async def _run(self, record: FitRecord, job: FitJob) -> FitRecord:
        try:
            result = await self._compute(job)
        except asyncio.CancelledError:
            raise  # the server is stopping: stop() marks the fit failed
        except BaseException as exc:
            reason = getattr(exc, "detail", None) or f"{type(exc).__name__}: {exc}"
            await run_in_threadpool(self.store.fail_fit, record.id, reason)
            raise
        finally:
            self._stages.pop(record.id, None)
        return await run_in_threadpool(self.store.complete_fit, record.id, result)

    async def _compute(self, job: FitJob) -> NewFit:
        executor = self._executor
        if executor is None:
            return await run_in_threadpool(compute_fit, job, self._stage_setter(job.fit_id))
        try:
            # Submitted from a thread: a submit may start a worker process, which waits for
            # the fork server (seconds, the first time: it imports the mixers) and would
            # otherwise stall every request meanwhile.
            future = await run_in_threadpool(executor.submit, _run_in_worker, job)
            return await asyncio.wrap_future(future)
        except BrokenProcessPool:
            # A worker died (killed, out of memory): every fit it held fails; new fits get a
            # new pool.
            if self._executor is executor:
                _terminate(executor)
                self._start_pool()
            raise RuntimeError("the fit's worker process died (out of memory?)") from None

    def _stage_setter(self, fit_id: str) -> Callable[[str], None]:
        def set_stage(stage: str) -> None:
            if fit_id in self._stages:
                self._stages[fit_id] = stage

        return set_stage

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            try:
                await run_in_threadpool(self.store.beat_fits, self.instance, dict(self._stages))
                failed = await run_in_threadpool(
                    self.store.fail_abandoned_fits,
                    RESTART_REASON,
                    stale_seconds=self.stale_seconds,
                )
                if failed:
                    log.warning("failed %d fits whose server stopped: %s", len(failed), failed)
            except Exception:
                log.exception("fit heartbeat failed; retrying later")


def _forget(tasks: set[asyncio.Task[FitRecord]]) -> Callable[[asyncio.Task[FitRecord]], None]:
    def done(task: asyncio.Task[FitRecord]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a fit nobody awaited (wait=false) failed in the store

    return done


def _terminate(executor: ProcessPoolExecutor) -> None:
    """Stop the pool now: a running fit is not waited for (it could take minutes)."""
    # ProcessPoolExecutor (before 3.14) has no public way to stop a busy worker.
    processes = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=5)
