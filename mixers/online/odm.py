"""``odm``: Online Data Mixing (Albalak et al. 2023) as an EXP3-style bandit over the domains.

One bandit round per feedback (the API counts ODM's time ``t`` in feedback rounds). The paper
form, §3.1 as restated by its re-implementations, not the official repo's linear exp(loss) rule:

* exploration rate ``eps_t = min(1/K, sqrt(ln K / (K t)))`` with ``eps_0 = 1/K``;
* policy ``pi_t = (1 - K eps_t) softmax(eps_{t-1} R) + eps_t``: the previous rate is the softmax
  temperature and ``eps_t`` the exploration floor (never 0 for K > 1);
* reward: the importance-weighted training loss ``L_i / pi_i`` of every domain the segment
  reported (a segment samples every domain, so all reported domains are "pulled"), smoothed
  ``R_i <- a R_i + (1 - a) L_i / pi_i`` (a = 0.9); omitted domains keep their estimate;
* warm-up: until the trainer reports step ``warmup_steps`` the initial weights are played and the
  feedback does not feed the bandit, and ``t`` counts post-warm-up rounds (as DataFlex does).

The schedule (*when*: warm-up, bandit time) is in ``_in_warmup`` / ``exploration_rate``; the
update rule (*how*) in ``odm_policy`` / ``smooth_rewards``. The played weights are the policy
projected into the space's bounds. The module also holds the small helpers the other online
mixers share (clean feedback, floor + projection).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from mixers.base import DomainSpace, FloatArray
from mixers.online.base import (
    Decision,
    Feedback,
    OnlineConfig,
    OnlineMixer,
    State,
    count_round,
)
from mixers.registry import register

__all__ = [
    "LOSS_CAP",
    "OdmConfig",
    "OdmMixer",
    "clean_losses",
    "exploration_rate",
    "odm_policy",
    "play",
    "smooth_rewards",
]

LOSS_CAP = 1e6
"""Reported losses are clipped into [0, LOSS_CAP]: a runaway value must not overflow the state."""


def clean_losses(space: DomainSpace, losses: Mapping[str, float]) -> dict[str, float]:
    """The usable part of a per-domain loss report: known domains, finite numbers, clipped.

    Unknown domains, NaN, infinities and non-numbers are dropped (as if omitted); the rest are
    clipped into ``[0, LOSS_CAP]``.
    """
    known = set(space.names)
    out: dict[str, float] = {}
    for name, value in losses.items():
        if name not in known or isinstance(value, bool):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[name] = min(max(number, 0.0), LOSS_CAP)
    return out


def play(space: DomainSpace, p: FloatArray, floor: float = 0.0) -> FloatArray:
    """``p`` mixed with ``floor`` of uniform, then projected into the bounds: a valid mixture.

    A non-finite or all-zero ``p`` falls back to uniform. With ``floor > 0`` every domain keeps a
    positive weight unless its upper bound is 0.
    """
    k = space.k
    q = np.asarray(p, dtype=float)
    if q.shape != (k,) or not np.all(np.isfinite(q)) or np.any(q < 0) or q.sum() <= 0:
        q = np.full(k, 1.0 / k)
    q = q / q.sum()
    q = (1.0 - floor) * q + floor / k
    out: FloatArray = space.project(q)[0]
    return out


def softmax(x: FloatArray) -> FloatArray:
    z = np.asarray(x, dtype=float)
    z = np.exp(z - z.max())
    out: FloatArray = z / z.sum()
    return out


def exploration_rate(k: int, t: int) -> float:
    """``eps_t = min(1/K, sqrt(ln K / (K t)))``; ``eps_0 = 1/K``."""
    if t <= 0:
        return 1.0 / k
    return min(1.0 / k, math.sqrt(math.log(k) / (k * t)))


def odm_policy(rewards: FloatArray, t: int) -> FloatArray:
    """The policy at bandit round ``t >= 1``: ``(1 - K eps_t) softmax(eps_{t-1} R) + eps_t``."""
    k = len(rewards)
    eps, previous = exploration_rate(k, t), exploration_rate(k, t - 1)
    policy: FloatArray = (1.0 - k * eps) * softmax(previous * rewards) + eps
    return policy


def smooth_rewards(
    rewards: FloatArray, losses: Mapping[int, float], policy: FloatArray, smoothing: float
) -> FloatArray:
    """``R_i <- a R_i + (1 - a) L_i / pi_i`` for the reported domains ``i``; the others kept."""
    out = np.array(rewards, dtype=float)
    for i, loss in losses.items():
        estimate = min(loss / max(float(policy[i]), 1e-12), LOSS_CAP * 1e6)
        out[i] = smoothing * out[i] + (1.0 - smoothing) * estimate
    return out


class OdmConfig(OnlineConfig):
    segment_steps: int | None = Field(
        default=100,
        ge=1,
        description="training steps per bandit round (one feedback each); the paper updates "
        "every step, which a REST round trip makes costly: 100 is a compromise",
    )
    smoothing: float = Field(
        default=0.9,
        ge=0.0,
        lt=1.0,
        description="a in R <- a R + (1 - a) L / pi (paper: 0.9; the repo's 1B scripts 0.5)",
    )
    warmup_steps: int = Field(
        default=100,
        ge=0,
        description="train on the initial weights until the trainer reports this step; "
        "warm-up feedback does not feed the bandit (paper: 2,000 of 100,000 steps)",
    )
    init: Literal["uniform", "prior"] = Field(
        default="uniform",
        description="warm-up weights: uniform 1/K, or the domains' prior (the paper used the "
        "natural Pile weights)",
    )


@register
class OdmMixer(OnlineMixer[OdmConfig]):
    name: ClassVar[str] = "odm"
    description: ClassVar[str] = (
        "Online Data Mixing (Albalak et al. 2023): an EXP3 bandit, one round per feedback, "
        "rewarding domains by their importance-weighted, smoothed training loss "
        "(train_losses); decaying exploration eps_t keeps every domain sampled."
    )

    def init_state(self, space: DomainSpace, seed: int) -> State:
        return {
            "rounds": 0,
            "tokens": {},
            "t": 0,
            "last_step": None,
            "rewards": dict.fromkeys(space.names, 0.0),
        }

    def _in_warmup(self, state: State) -> bool:
        last = state.get("last_step")
        warmup = self.config.warmup_steps
        return warmup > 0 and (last is None or int(last) < warmup)

    def _rewards(self, space: DomainSpace, state: State) -> FloatArray:
        stored = state.get("rewards", {})
        return np.array([float(stored.get(name, 0.0)) for name in space.names])

    def decide(self, space: DomainSpace, state: State) -> Decision:
        steps = self.config.segment_steps
        if self._in_warmup(state):
            base = space.prior if self.config.init == "prior" else np.full(space.k, 1 / space.k)
            return Decision(play(space, base), steps, "warmup")
        t = int(state.get("t", 0)) + 1
        policy = odm_policy(self._rewards(space, state), t)
        return Decision(play(space, policy), steps, "exploit")

    def observe(self, space: DomainSpace, state: State, feedback: Feedback) -> State:
        new = count_round(state, feedback)
        new["last_step"] = int(feedback.step)
        if self._in_warmup(state):
            return new
        played = self.decide(space, state).weights
        losses = clean_losses(space, feedback.train_losses)
        index = {name: i for i, name in enumerate(space.names)}
        rewards = smooth_rewards(
            self._rewards(space, state),
            {index[name]: loss for name, loss in losses.items()},
            played,
            self.config.smoothing,
        )
        new["rewards"] = {name: float(r) for name, r in zip(space.names, rewards, strict=True)}
        new["t"] = int(state.get("t", 0)) + 1
        return new
