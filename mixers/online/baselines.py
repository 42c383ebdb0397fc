"""``stratified`` and ``fixed``: the online baselines. They never move the weights, but they do
the same bookkeeping as the learning mixers, so a baseline run is comparable to a real one."""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from mixers.base import DomainSpace
from mixers.offline.fixed import FixedConfig, check_fixed_weights
from mixers.online.base import (
    Decision,
    Feedback,
    OnlineConfig,
    OnlineMixer,
    State,
    count_round,
)
from mixers.registry import register

__all__ = ["FixedOnlineMixer", "StratifiedMixer"]


class StratifiedConfig(OnlineConfig):
    base: Literal["uniform", "prior"] = Field(
        default="uniform", description="uniform 1/K, or the domains' prior (token share)"
    )


@register
class StratifiedMixer(OnlineMixer[StratifiedConfig]):
    name: ClassVar[str] = "stratified"
    description: ClassVar[str] = (
        "Static weights: uniform over the domains (or the prior with config.base = 'prior'), "
        "projected into the bounds. The baseline every online mixer should beat."
    )

    def _weights(self, space: DomainSpace) -> np.ndarray:
        raw = space.prior if self.config.base == "prior" else np.full(space.k, 1 / space.k)
        weights: np.ndarray = space.project(raw)[0]
        return weights

    def init_state(self, space: DomainSpace, seed: int) -> State:
        return {"rounds": 0, "tokens": {}}

    def decide(self, space: DomainSpace, state: State) -> Decision:
        return Decision(self._weights(space), self.config.segment_steps, "exploit")

    def observe(self, space: DomainSpace, state: State, feedback: Feedback) -> State:
        return count_round(state, feedback)


class FixedOnlineConfig(OnlineConfig, FixedConfig):
    """``weights`` as the offline ``fixed`` has it, plus ``segment_steps``."""


@register
class FixedOnlineMixer(OnlineMixer[FixedOnlineConfig]):
    name: ClassVar[str] = "fixed"
    description: ClassVar[str] = "Train on config.weights throughout the run."

    def check_space(self, space: DomainSpace) -> None:
        check_fixed_weights(self.config, space)

    def init_state(self, space: DomainSpace, seed: int) -> State:
        return {"rounds": 0, "tokens": {}}

    def decide(self, space: DomainSpace, state: State) -> Decision:
        return Decision(space.to_array(self.config.weights), self.config.segment_steps, "exploit")

    def observe(self, space: DomainSpace, state: State, feedback: Feedback) -> State:
        return count_round(state, feedback)
