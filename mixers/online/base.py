"""The online mixer interface: pure transitions over a JSON-serialisable state.

The service keeps the state in the database and versions it with compare-and-swap, so a mixer
holds nothing between calls: ``init_state`` makes the first state, ``decide`` says which weights
to train on next (and for how many steps, in which phase), ``observe`` folds one feedback round
into a new state. No clock, no I/O, no mutation of the input: the same state and feedback always
give the same result, which is what makes replicas and resume safe.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from pydantic import Field

from mixers.base import DomainSpace, FloatArray, MethodConfig, Mixer, Mode
from mixopt.errors import ErrorItem, InvalidInput

__all__ = ["Decision", "Feedback", "OnlineConfig", "OnlineMixer", "State"]

State = dict[str, Any]


@dataclass(frozen=True)
class Decision:
    weights: FloatArray
    train_steps: int | None
    phase: str = "exploit"


@dataclass(frozen=True)
class Feedback:
    """One training segment as the trainer reports it (see the contract's POST /feedback)."""

    step: int
    train_losses: Mapping[str, float] = field(default_factory=dict)
    eval_losses: Mapping[str, float] = field(default_factory=dict)
    tokens: Mapping[str, int] = field(default_factory=dict)
    version: int | None = None


class OnlineConfig(MethodConfig):
    segment_steps: int | None = Field(
        default=500,
        ge=1,
        description="training steps on each set of weights before the next feedback "
        "(null: the trainer decides)",
    )


OnlineConfigT = TypeVar("OnlineConfigT", bound=OnlineConfig)


class OnlineMixer(Mixer[OnlineConfigT]):
    mode: ClassVar[Mode] = "online"
    Config: ClassVar[type[MethodConfig]] = OnlineConfig

    @abstractmethod
    def init_state(self, space: DomainSpace, seed: int) -> State:
        """The state before any feedback."""

    @abstractmethod
    def decide(self, space: DomainSpace, state: State) -> Decision:
        """The weights to train on from now, for how many steps, in which phase."""

    @abstractmethod
    def observe(self, space: DomainSpace, state: State, feedback: Feedback) -> State:
        """A new state with one round of feedback folded in; ``state`` is left untouched."""

    def check_feedback(self, space: DomainSpace, feedback: Feedback) -> None:
        """Refuse feedback the mixer cannot use: ``InvalidInput`` located relative to the
        feedback (``("eval_losses", name)``). By default: domains the experiment lacks."""
        known = set(space.names)
        errors = [
            ErrorItem((field, name), f"unknown domain {name!r}")
            for field, values in (
                ("train_losses", feedback.train_losses),
                ("eval_losses", feedback.eval_losses),
                ("tokens", feedback.tokens),
            )
            for name in values
            if name not in known
        ]
        if errors:
            raise InvalidInput("feedback names domains the experiment does not have", errors)

    def recommend(self, space: DomainSpace, state: State) -> FloatArray:
        """Weights to reuse for a fresh run: by default the final weights."""
        return self.decide(space, state).weights


def count_round(state: State, feedback: Feedback) -> State:
    """The bookkeeping every mixer shares: rounds seen and tokens consumed per domain."""
    tokens = dict(state.get("tokens", {}))
    for name, count in feedback.tokens.items():
        tokens[name] = int(tokens.get(name, 0)) + int(count)
    return {**state, "rounds": int(state.get("rounds", 0)) + 1, "tokens": tokens}
