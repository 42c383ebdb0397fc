"""``aioli``: Aioli (Chen et al. 2024), online estimation of the domain interaction matrix.

Each round is a run of feedback segments the mixer dictates through ``train_steps`` and
``phase`` (the schedule, *when*):

1. LearnParams, phase ``"perturb"``: ``lp_rounds`` sweeps over the K domains, each sweep in an
   order drawn from the seed and the round. Segment j trains ``lp_steps`` steps on the perturbed
   mixture ``w(j)``: ``one_hot_factor`` on domain j, the rest spread evenly (projected into the
   bounds). After each segment the drop of every domain's held-out loss since the previous
   feedback (``eval_losses``; the drops telescope) is added to column j of ``A_hat``.
2. At the end of the sweeps (the update rule, *how*): ``A_hat`` averaged per cell, de-mixed by
   the linear solve ``W A_i^T = A_hat_i^T`` (row j of ``W`` is the mixture ``w(j)`` played), shifted
   to a minimum of 0 and divided by its sum, optionally smoothed by an EMA, then the
   exponentiated-gradient step ``p <- p exp(eta sum_i A_ij)`` (from uniform when an EMA is set,
   as the repo does), normalised and mixed with ``floor`` of uniform.
3. Exploit, phase ``"exploit"``: ``segment_steps`` steps on ``p``, then the next round.

Defaults follow the paper's 3-domain scripts (lp_rounds 4, lp_steps 6 there; 4 here, as the
README suggests, and ohf 0.5, eta 0.2, no EMA). A drop is only counted where both evals report
the domain, so missing eval losses leave cells unmeasured (the service answers 422 instead).
"""

from __future__ import annotations

from typing import Any, ClassVar

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
from mixers.online.odm import clean_losses, play
from mixers.registry import register
from mixopt.errors import InvalidInput

__all__ = ["AioliConfig", "AioliMixer", "aioli_update", "estimate_interactions", "sweep_order"]


def sweep_order(seed: int, round_: int, k: int, sweeps: int) -> list[int]:
    """The perturbation order of a round: ``sweeps`` random permutations of the K domains."""
    rng = np.random.default_rng([int(seed) % 2**63, int(round_)])
    return [int(j) for _ in range(sweeps) for j in rng.permutation(k)]


def perturbation(space: DomainSpace, j: int, one_hot_factor: float) -> FloatArray:
    """``one_hot_factor`` on domain ``j``, the rest spread evenly, projected into the bounds."""
    k = space.k
    w = np.full(k, (1.0 - one_hot_factor) / max(k - 1, 1))
    w[j] = one_hot_factor
    return play(space, w)


def estimate_interactions(
    drops: FloatArray, counts: FloatArray, mixtures: FloatArray
) -> FloatArray:
    """Normalised ``A`` from summed drops ``[i, j]`` (eval i after segment j) and their counts.

    Cells never measured count as 0. Each row is de-mixed by least squares against the played
    perturbation mixtures (rows of ``mixtures``), then ``A`` is shifted to a minimum of 0 and
    scaled to sum to 1 (all zeros if it has no spread).
    """
    mean = np.where(counts > 0, drops / np.maximum(counts, 1.0), 0.0)
    solved = np.linalg.lstsq(mixtures, mean.T, rcond=None)[0].T
    a = np.where(np.isfinite(solved), solved, 0.0)
    if a.min() < 0:
        a = a - a.min()
    total = float(a.sum())
    out: FloatArray = a / total if total > 0 and np.isfinite(total) else np.zeros_like(a)
    return out


def aioli_update(p: FloatArray, a: FloatArray, eta: float, floor: float) -> FloatArray:
    """``p exp(eta sum_i A_ij)`` normalised, mixed with ``floor`` of uniform."""
    logits = np.log(np.maximum(p, 1e-300)) + eta * a.sum(axis=0)
    z = np.exp(logits - logits.max())
    new: FloatArray = (1.0 - floor) * z / z.sum() + floor / len(p)
    return new


class AioliConfig(OnlineConfig):
    segment_steps: int | None = Field(
        default=170,
        ge=1,
        description="steps of the exploit segment that ends each round (with the other "
        "defaults and 5 domains a round is 250 steps, the paper's update_steps)",
    )
    lp_rounds: int = Field(default=4, ge=1, description="perturbation sweeps per round")
    lp_steps: int = Field(default=4, ge=1, description="training steps per perturbation")
    one_hot_factor: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="weight of the perturbed domain (the rest is spread evenly); keep it "
        "above 1/K so the perturbations can be told apart",
    )
    eta: float = Field(default=0.2, gt=0, allow_inf_nan=False, description="EG step size")
    ema: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="weight of the previous A in A <- (1 - ema) A + ema A_prev; with it p is "
        "a fresh softmax of the smoothed column sums (null: cumulative EG, no EMA)",
    )
    floor: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="share of uniform mixed into p after every update, so no domain vanishes",
    )


@register
class AioliMixer(OnlineMixer[AioliConfig]):
    name: ClassVar[str] = "aioli"
    description: ClassVar[str] = (
        "Aioli (Chen et al. 2024): each round perturbs the mixture toward every domain in turn "
        "(phase 'perturb', lp_steps each), estimates the interaction matrix from the drops in "
        "held-out eval_losses (which must cover every domain), then takes an exponentiated-"
        "gradient step and trains on it (phase 'exploit')."
    )

    def check_feedback(self, space: DomainSpace, feedback: Feedback) -> None:
        """Aioli estimates how each domain's held-out loss moves: it needs every one of them."""
        missing = [name for name in space.names if name not in feedback.eval_losses]
        if missing:
            raise InvalidInput.at(
                ("eval_losses",),
                f"aioli needs eval_losses for every domain; missing: {', '.join(missing)}",
            )
        super().check_feedback(space, feedback)

    def _perturbations(self, space: DomainSpace) -> int:
        return 0 if space.k < 2 else space.k * self.config.lp_rounds

    def init_state(self, space: DomainSpace, seed: int) -> State:
        k = space.k
        return {
            "rounds": 0,
            "tokens": {},
            "seed": int(seed),
            "round": 0,
            "segment": 0,
            "p": dict.fromkeys(space.names, 1.0 / k),
            "last_eval": None,
            "drops": [[0.0] * k for _ in range(k)],
            "counts": [[0] * k for _ in range(k)],
            "ema_a": None,
        }

    def _p(self, space: DomainSpace, state: State) -> FloatArray:
        stored = state.get("p", {})
        return np.array([float(stored.get(name, 1.0 / space.k)) for name in space.names])

    def _target(self, space: DomainSpace, state: State) -> int | None:
        """The domain the current segment perturbs, or None in the exploit segment."""
        segment = int(state.get("segment", 0))
        if segment >= self._perturbations(space):
            return None
        order = sweep_order(
            int(state.get("seed", 0)), int(state.get("round", 0)), space.k, self.config.lp_rounds
        )
        return order[segment]

    def decide(self, space: DomainSpace, state: State) -> Decision:
        config = self.config
        target = self._target(space, state)
        if target is not None:
            return Decision(
                perturbation(space, target, config.one_hot_factor), config.lp_steps, "perturb"
            )
        return Decision(play(space, self._p(space, state), config.floor), config.segment_steps)

    def recommend(self, space: DomainSpace, state: State) -> FloatArray:
        """The current ``p`` (the exploit weights), never a perturbation."""
        return play(space, self._p(space, state), self.config.floor)

    def observe(self, space: DomainSpace, state: State, feedback: Feedback) -> State:
        config = self.config
        k = space.k
        new = count_round(state, feedback)
        evals = clean_losses(space, feedback.eval_losses)
        last: dict[str, Any] = state.get("last_eval") or {}
        drops = np.array(state.get("drops", [[0.0] * k] * k), dtype=float).reshape(k, k)
        counts = np.array(state.get("counts", [[0] * k] * k), dtype=float).reshape(k, k)
        target = self._target(space, state)
        new["last_eval"] = evals
        if target is None:  # the exploit segment ended: the next round begins
            new["round"] = int(state.get("round", 0)) + 1
            new["segment"] = 0
            new["drops"] = [[0.0] * k for _ in range(k)]
            new["counts"] = [[0] * k for _ in range(k)]
            return new
        for i, name in enumerate(space.names):
            if name in evals and name in last:
                drops[i, target] += float(last[name]) - evals[name]
                counts[i, target] += 1
        segment = int(state.get("segment", 0)) + 1
        new["segment"] = segment
        new["drops"] = [[float(x) for x in row] for row in drops]
        new["counts"] = [[int(x) for x in row] for row in counts]
        if segment < self._perturbations(space):
            return new
        mixtures = np.array([perturbation(space, j, config.one_hot_factor) for j in range(k)])
        a = estimate_interactions(drops, counts, mixtures)
        p = self._p(space, state)
        if config.ema is not None:
            previous = state.get("ema_a")
            if previous is not None:
                a = (1.0 - config.ema) * a + config.ema * np.array(previous, dtype=float)
            new["ema_a"] = [[float(x) for x in row] for row in a]
            p = np.full(k, 1.0 / k)
        p = aioli_update(p, a, config.eta, config.floor)
        new["p"] = {name: float(x) for name, x in zip(space.names, p, strict=True)}
        return new
