"""A toy trainer for the online mixers: five domains whose held-out losses fall with data.

Hidden truth, not told to the mixers:

* ``TRANSFER[i, j]``: how much a step on domain ``j`` counts as training for domain ``i``.
  ``web`` is broad (it helps every useful domain), ``code`` and ``math`` help each other,
  ``books`` and ``web`` help each other a little. The best static mixture (found numerically) is
  about (0.56, 0.20, 0.15, 0.09, 0.00), 0.064 below stratified's final average loss.
  ``noise`` (the last domain) is useless: it helps nothing, nothing helps it, and it learns
  little itself.
* Each domain's held-out loss follows a power law in its effective data (diminishing returns):
  ``L_i = floor_i + scale_i * (1 + E_i / 100) ** -0.5`` with ``E = TRANSFER @ steps_per_domain``.
* Reports are noisy, ``noise`` very much so: training losses are the segment-end loss plus
  Gaussian noise (std 0.3 for ``noise``, 0.02 for the others, batch sampling noise); eval
  losses come from a fixed held-out set, so their noise is 20 times smaller (0.015, 0.001).
  Aioli's estimate of A is sensitive to it: at eval noise 0.005 / 0.05 its gain over stratified
  is gone (the shift-by-min normalisation lets one noisy row flatten the whole update).

The score of a run is the average held-out loss over all five domains at the end (noise-free),
the metric Aioli reports (average over groups).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize

from mixers.base import DomainSpace
from mixers.online.base import Feedback, OnlineMixer, State

NAMES = ("web", "code", "math", "books", "noise")
USELESS = "noise"
TRANSFER = np.array(
    [
        # web  code  math  books noise  <- trained on
        [1.0, 0.2, 0.1, 0.3, 0.0],  # web
        [0.3, 1.0, 0.3, 0.0, 0.0],  # code
        [0.2, 0.4, 1.0, 0.0, 0.0],  # math
        [0.3, 0.0, 0.0, 1.0, 0.0],  # books
        [0.0, 0.0, 0.0, 0.0, 0.3],  # noise
    ]
)
FLOOR = np.array([2.0, 1.0, 1.2, 2.2, 2.6])
SCALE = np.array([3.0, 2.5, 2.5, 2.0, 0.3])
NOISE = np.array([0.02, 0.02, 0.02, 0.02, 0.3])
EVAL_NOISE = NOISE / 20
TOKENS_PER_STEP = 1024
TOTAL_STEPS = 2000
FALLBACK_SEGMENT = 100


@dataclass(frozen=True)
class World:
    """A hidden truth: per-domain power laws in the effective data ``transfer @ steps``."""

    names: tuple[str, ...]
    transfer: NDArray[np.float64]
    floor: NDArray[np.float64]
    scale: NDArray[np.float64]
    noise: NDArray[np.float64]
    exponent: NDArray[np.float64]
    half_steps: float = 100.0

    @property
    def eval_noise(self) -> NDArray[np.float64]:
        out: NDArray[np.float64] = self.noise / 20
        return out

    def held_out(self, steps_per_domain: NDArray[np.float64]) -> NDArray[np.float64]:
        effective = self.transfer @ steps_per_domain
        loss: NDArray[np.float64] = (
            self.floor + self.scale * (1.0 + effective / self.half_steps) ** -self.exponent
        )
        return loss

    def space(self) -> DomainSpace:
        return DomainSpace.from_domains([{"name": n} for n in self.names])


WORLD = World(NAMES, TRANSFER, FLOOR, SCALE, NOISE, np.full(len(NAMES), 0.5))


def random_world(seed: int, k: int) -> World:
    """Another hidden truth of the same kind, drawn from ``seed``: ``k - 1`` useful domains with
    random sparse transfer (one of them broad), exponents 0.3-0.8, and a last domain that is
    useless and noisy, as in ``WORLD``."""
    rng = np.random.default_rng([seed, k])
    useful = k - 1
    transfer = np.eye(k)
    mask = rng.random((useful, useful)) < 0.4
    transfer[:useful, :useful] += mask * rng.uniform(0.05, 0.5, (useful, useful))
    broad = int(rng.integers(useful))
    transfer[:useful, broad] = np.maximum(transfer[:useful, broad], rng.uniform(0.2, 0.5, useful))
    np.fill_diagonal(transfer, 1.0)
    transfer[-1, -1] = 0.3
    floor = rng.uniform(1.0, 2.5, k)
    scale = np.append(rng.uniform(1.0, 3.0, useful), 0.3)
    noise = np.append(np.full(useful, 0.02), 0.3)
    exponent = np.append(rng.uniform(0.3, 0.8, useful), 0.5)
    names = (*(f"d{i}" for i in range(useful)), "noise")
    return World(names, transfer, floor, scale, noise, exponent, float(rng.uniform(50, 200)))


def space() -> DomainSpace:
    return WORLD.space()


def held_out(steps_per_domain: NDArray[np.float64]) -> NDArray[np.float64]:
    return WORLD.held_out(steps_per_domain)


@dataclass
class Result:
    final_losses: NDArray[np.float64]
    mean_weights: NDArray[np.float64]
    final_weights: NDArray[np.float64]
    recommended: NDArray[np.float64]
    states: list[State] = field(default_factory=list)

    @property
    def score(self) -> float:
        return float(self.final_losses.mean())


def simulate(
    mixer: OnlineMixer[Any],
    seed: int,
    total_steps: int = TOTAL_STEPS,
    keep_states: bool = False,
    world: World = WORLD,
) -> Result:
    """Train ``total_steps`` steps under the mixer's decisions; feedback after every segment."""
    sp = world.space()
    rng = np.random.default_rng(seed)
    state = mixer.init_state(sp, seed)
    steps = np.zeros(sp.k)
    done = 0
    states = [state] if keep_states else []
    weights = np.full(sp.k, 1.0 / sp.k)
    while done < total_steps:
        decision = mixer.decide(sp, state)
        weights = decision.weights
        length = min(decision.train_steps or FALLBACK_SEGMENT, total_steps - done)
        steps = steps + weights * length
        done += length
        loss = world.held_out(steps)
        feedback = Feedback(
            step=done,
            train_losses=sp.to_dict(loss + rng.normal(0.0, world.noise)),
            eval_losses=sp.to_dict(loss + rng.normal(0.0, world.eval_noise)),
            tokens={
                n: round(float(w) * length * TOKENS_PER_STEP)
                for n, w in zip(world.names, weights, strict=True)
            },
        )
        state = mixer.observe(sp, state, feedback)
        if keep_states:
            states.append(state)
    return Result(
        final_losses=world.held_out(steps),
        mean_weights=steps / steps.sum(),
        final_weights=np.asarray(weights),
        recommended=mixer.recommend(sp, state),
        states=states,
    )


def reference_losses(total_steps: int = TOTAL_STEPS, world: World = WORLD) -> dict[str, float]:
    """DoReMi's reference: the final held-out losses of a stratified (uniform) run."""
    k = len(world.names)
    return world.space().to_dict(world.held_out(np.full(k, total_steps / k)))


def best_static(world: World = WORLD, total_steps: int = TOTAL_STEPS) -> float:
    """The lowest final average held-out loss any fixed mixture reaches (numerically)."""
    k = len(world.names)

    def loss(z: NDArray[np.float64]) -> float:
        w = np.exp(z - z.max())
        return float(world.held_out(w / w.sum() * total_steps).mean())

    starts = [np.zeros(k), *np.random.default_rng(0).normal(0.0, 1.0, (4, k))]
    return min(
        float(minimize(loss, z, method="Nelder-Mead", options={"maxiter": 4000}).fun)
        for z in starts
    )


def head_room_captured(
    method: str,
    seed: int,
    world: World = WORLD,
    config: dict[str, Any] | None = None,
    best: float | None = None,
) -> float:
    """The share of the best static mixture's gain over stratified that one run of ``method``
    (its defaults, DoReMi given stratified's final losses as reference) reaches within the run;
    ``best``: ``best_static(world)`` when already known."""
    from mixers import online_method

    if method == "doremi" and config is None:
        config = {"reference_losses": reference_losses(world=world)}

    def run(name: str, options: dict[str, Any]) -> float:
        mixer = online_method(name).from_config(options)
        mixer.check_space(world.space())
        return simulate(mixer, seed, world=world).score

    stratified = run("stratified", {})
    best = best_static(world) if best is None else best
    return (stratified - run(method, config or {})) / (stratified - best)
