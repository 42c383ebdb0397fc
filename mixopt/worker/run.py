"""What a run trainer sees (``RunContext``) and returns (``RunOutcome``)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from mixopt import schemas
from mixopt.client import MixoptClient

__all__ = ["RunContext", "RunOutcome", "RunTrainer"]

log = logging.getLogger("mixopt.worker")


@dataclass(frozen=True)
class RunOutcome:
    """How one training attempt ended: ``metrics`` (completed), ``failure`` (the reason), or
    neither (stopped before the end: released, or nothing if the lease was lost)."""

    metrics: Mapping[str, float] | None = None
    failure: str | None = None
    after_complete: Callable[[], None] | None = None
    """Called once the service stored the completion (e.g. delete the run's checkpoint: until
    then a redelivered run may still need it)."""

    @classmethod
    def completed(
        cls, metrics: Mapping[str, float], after_complete: Callable[[], None] | None = None
    ) -> RunOutcome:
        return cls(metrics=dict(metrics), after_complete=after_complete)

    @classmethod
    def failed(cls, reason: str) -> RunOutcome:
        return cls(failure=reason)

    @classmethod
    def stopped(cls) -> RunOutcome:
        return cls()


class RunContext:
    """A claimed run as its trainer sees it: whether to stop, the client, progress logging."""

    def __init__(
        self,
        run: schemas.Run,
        client: MixoptClient,
        worker_name: str,
        stop: threading.Event,
        lease_lost: threading.Event,
    ) -> None:
        self.run = run
        self.client = client
        self.worker_name = worker_name
        self._stop = stop
        self._lease_lost = lease_lost
        self._last_progress = time.monotonic()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def lease_lost(self) -> bool:
        return self._lease_lost.is_set()

    def should_stop(self) -> bool:
        return self._stop.is_set() or self._lease_lost.is_set()

    def progress(self, step: int, total: int) -> None:
        # At most one line every 30 s: a log per step would drown the worker's output.
        now = time.monotonic()
        if now - self._last_progress >= 30 or step == total:
            self._last_progress = now
            log.info("run %s: step %d/%d", self.run.id, step, total)


class RunTrainer(Protocol):
    """Trains one claimed run; the worker heartbeats meanwhile and reports the outcome. An
    exception fails the attempt with its message (connection errors leave it to the lease)."""

    def __call__(self, run: schemas.Run, context: RunContext) -> RunOutcome: ...
