"""Two tiny methods that mixopt does not ship: what a plug-in author writes, one module.

Each is a config and a mixer class; registering them (``mixers.register``) is all the service
needs to serve them. ``uniform`` (offline) proposes mixtures uniform on the simplex and fits,
recommends and predicts with the shared defaults. ``greedy`` (online) moves weight towards the
domains whose held-out loss is highest. The tests register them only for as long as they run
(``registered``), so the built-in method list stays as shipped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import ClassVar

import numpy as np
import pytest
from pydantic import Field

from mixers import DomainSpace, MethodConfig, Observation, OfflineMixer, Proposal, registry
from mixers.online.base import Decision, Feedback, OnlineConfig, OnlineMixer, State, count_round
from mixers.online.odm import clean_losses, play, softmax
from mixers.sampling import flat_samples

__all__ = ["GreedyMixer", "UniformMixer", "registered"]


class UniformConfig(MethodConfig):
    """No options beyond the shared ones."""


class UniformMixer(OfflineMixer[UniformConfig]):
    name: ClassVar[str] = "uniform"
    description: ClassVar[str] = "Proxy runs on mixtures drawn uniformly from the simplex."

    def propose(
        self,
        space: DomainSpace,
        history: Sequence[Observation],
        count: int,
        rng: np.random.Generator,
    ) -> list[Proposal]:
        return [Proposal(row) for row in flat_samples(space, count, rng)]


class GreedyConfig(OnlineConfig):
    step_size: float = Field(
        default=2.0, gt=0, allow_inf_nan=False, description="softmax temperature on the losses"
    )
    floor: float = Field(
        default=0.05, gt=0, le=1, description="share of uniform mixed into the weights"
    )


class GreedyMixer(OnlineMixer[GreedyConfig]):
    name: ClassVar[str] = "greedy"
    description: ClassVar[str] = "Weights follow a softmax of the latest held-out losses."

    def init_state(self, space: DomainSpace, seed: int) -> State:
        return {"rounds": 0, "tokens": {}, "losses": dict.fromkeys(space.names, 0.0)}

    def decide(self, space: DomainSpace, state: State) -> Decision:
        losses = np.array([float(state["losses"][name]) for name in space.names])
        weights = play(space, softmax(self.config.step_size * losses), self.config.floor)
        return Decision(weights, self.config.segment_steps, "exploit")

    def observe(self, space: DomainSpace, state: State, feedback: Feedback) -> State:
        new = count_round(state, feedback)
        new["losses"] = {**state["losses"], **clean_losses(space, feedback.eval_losses)}
        return new


@contextmanager
def registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The example methods registered, in copies of the registry's tables."""
    registry.methods()  # the built-in methods first, into the tables being copied
    monkeypatch.setattr(registry, "_OFFLINE", dict(registry._OFFLINE))
    monkeypatch.setattr(registry, "_ONLINE", dict(registry._ONLINE))
    registry.register(UniformMixer)
    registry.register(GreedyMixer)
    yield
