"""``OnlineMixture``: a training loop's view of an online run, on top of ``MixoptClient``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from mixopt import schemas

if TYPE_CHECKING:
    from mixopt.client._http import MixoptClient

__all__ = ["OnlineMixture"]


class OnlineMixture:
    """The trainer's side of an online run: which weights to sample by, and when to report.

    A training loop asks ``weights`` for its sampler, calls ``due(step)`` after each step, and
    when the segment is over calls ``report(step, ...)`` with the segment's per-domain losses
    and tokens; that answers with the next weights. After a restart from a checkpoint at step
    S, ``resume(S)`` puts the mixer back to the state it had at S. Between reports, ``poll()``
    costs a 304 when nothing changed (the client sends the ETag).

        mixture = OnlineMixture.start(client, experiment_id, "main", total_steps=20_000)
        for step in range(1, 20_001):
            batch = sample(mixture.weights); train(batch)
            if mixture.due(step):
                mixture.report(step, train_losses=..., eval_losses=..., tokens=...)
    """

    def __init__(self, client: MixoptClient, run_id: str, *, total_steps: int | None = None):
        self.client = client
        self.run_id = run_id
        self.total_steps = total_steps
        self.current: schemas.Weights = client.get_weights(run_id)

    @classmethod
    def start(
        cls,
        client: MixoptClient,
        experiment_id: str,
        name: str,
        *,
        total_steps: int | None = None,
        tags: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> OnlineMixture:
        """Start a training run of an online experiment (idempotent with ``request_id``)."""
        run = client.start_run(
            experiment_id, name, total_steps=total_steps, tags=tags, request_id=request_id
        )
        return cls(client, run.id, total_steps=total_steps)

    @property
    def weights(self) -> dict[str, float]:
        return self.current.weights

    @property
    def version(self) -> int:
        return self.current.version

    @property
    def phase(self) -> str:
        return self.current.phase

    @property
    def segment_end(self) -> int | None:
        """The step at which the current segment ends: where the mixer wants feedback. None when
        the mixer leaves it to the trainer. Never past ``total_steps``."""
        if self.current.train_steps is None:
            return self.total_steps
        end = self.current.step + self.current.train_steps
        return min(end, self.total_steps) if self.total_steps is not None else end

    def due(self, step: int) -> bool:
        """True once ``step`` (the number of the step just trained) ends the segment."""
        end = self.segment_end
        return end is not None and step >= end

    def report(
        self,
        step: int,
        *,
        train_losses: Mapping[str, float] | None = None,
        eval_losses: Mapping[str, float] | None = None,
        tokens: Mapping[str, int] | None = None,
    ) -> schemas.Weights:
        """Post the segment that ended at ``step``; the answer is the next weights."""
        self.current = self.client.feedback(
            self.run_id,
            step,
            version=self.current.version,
            train_losses=train_losses,
            eval_losses=eval_losses,
            tokens=tokens,
        )
        return self.current

    def poll(self) -> schemas.Weights:
        """Re-read the current weights (cheap: a 304 unless another process changed them)."""
        self.current = self.client.get_weights(self.run_id)
        return self.current

    def resume(self, step: int) -> schemas.Weights:
        """The trainer restarted from a checkpoint at ``step``: rewind the mixer to it."""
        self.current = self.client.resume(self.run_id, step)
        return self.current

    def complete(self, metrics: Mapping[str, float] | None = None) -> schemas.Run:
        """The run ended: its mixer state is frozen."""
        return self.client.complete(self.run_id, metrics or {})
