"""``fixed``: every proposal is the one mixture the user gives (replicates of a baseline)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from pydantic import Field

from mixers.base import DomainSpace, MethodConfig, Observation, Proposal
from mixers.offline.base import OfflineMixer
from mixers.registry import register

__all__ = ["FixedConfig", "FixedMixer", "check_fixed_weights"]


class FixedConfig(MethodConfig):
    weights: dict[str, float] = Field(
        description="the mixture, domain -> weight, summing to 1 and within the bounds"
    )


def check_fixed_weights(config: FixedConfig, space: DomainSpace) -> None:
    """The given mixture must be one of the space's (shared by the offline and online ``fixed``)."""
    space.validate_weights(config.weights, loc=("config", "weights"), enforce_bounds=True)


@register
class FixedMixer(OfflineMixer[FixedConfig]):
    name: ClassVar[str] = "fixed"
    description: ClassVar[str] = (
        "Train one given mixture: every proposal is a replicate of config.weights. Use it for "
        "a baseline, or to measure run-to-run noise."
    )

    def check_space(self, space: DomainSpace) -> None:
        check_fixed_weights(self.config, space)

    def propose(
        self,
        space: DomainSpace,
        history: Sequence[Observation],
        count: int,
        rng: np.random.Generator,
    ) -> list[Proposal]:
        weights = space.to_array(self.config.weights)
        return [Proposal(weights.copy()) for _ in range(count)]
