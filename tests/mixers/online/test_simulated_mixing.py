"""The online mixers against the toy trainer in ``simulator.py`` (2,000 steps, default configs)."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import pytest

from mixers import online_method
from mixers.online.base import OnlineMixer
from tests.mixers.online import simulator
from tests.mixers.online.simulator import NAMES, USELESS, Result, reference_losses, simulate

SEEDS = range(5)


def mixer(name: str, config: dict[str, Any] | None = None) -> OnlineMixer[Any]:
    instance = online_method(name).from_config(config or {})
    instance.check_space(simulator.space())
    return instance


@cache
def results(name: str) -> tuple[Result, ...]:
    config = {"reference_losses": reference_losses()} if name == "doremi" else {}
    return tuple(simulate(mixer(name, config), seed) for seed in SEEDS)


def average_loss(name: str) -> float:
    return float(np.mean([r.score for r in results(name)]))


def test_stratified_is_the_uniform_baseline() -> None:
    for result in results("stratified"):
        assert np.allclose(result.mean_weights, 1 / len(NAMES))


def test_odm_is_no_worse_than_stratified() -> None:
    assert average_loss("odm") <= average_loss("stratified")


def test_doremi_moves_weight_away_from_the_useless_domain() -> None:
    useless = NAMES.index(USELESS)
    for result in results("doremi"):  # below uniform in every seed
        assert result.mean_weights[useless] < 0.2
        assert result.recommended[useless] < 0.2
    # On average over the seeds, the useless domain gets the least weight, by a clear margin.
    recommended = np.mean([r.recommended for r in results("doremi")], axis=0)
    assert recommended[useless] < 0.16
    assert recommended[useless] == recommended.min()
    assert average_loss("doremi") < average_loss("stratified")


def test_aioli_beats_stratified_on_average() -> None:
    assert average_loss("aioli") < average_loss("stratified")


def test_aioli_recommends_its_exploit_weights() -> None:
    for result in results("aioli"):
        assert result.recommended.max() < 0.4  # a tilt, never a perturbation (0.5 on one)


# --- curves: per-domain learning curves with transfer, fitted online ---------------------------
# Measured with the defaults: head-room captured 0.76 on WORLD (seeds 0.74-0.82), 0.63 on
# random_world(1, 4) (worst seed 0.47), 0.73 on (3, 8), 0.64 on (5, 10).


def head_room_captured(world: simulator.World, seeds: range) -> list[float]:
    """Per seed: the share of the best static mixture's gain over stratified a curves run
    reaches within the run."""
    best = simulator.best_static(world)
    return [simulator.head_room_captured("curves", seed, world, best=best) for seed in seeds]


@pytest.mark.slow
def test_curves_captures_most_of_the_head_room_and_never_loses_to_stratified() -> None:
    captured = head_room_captured(simulator.WORLD, SEEDS)
    assert np.mean(captured) >= 0.5
    assert min(captured) > 0.0


@pytest.mark.slow
@pytest.mark.parametrize(("world_seed", "k"), [(1, 4), (3, 8), (5, 10)])
def test_curves_captures_half_the_head_room_on_other_worlds(world_seed: int, k: int) -> None:
    captured = head_room_captured(simulator.random_world(world_seed, k), range(3))
    assert np.mean(captured) >= 0.5
    assert min(captured) > 0.0


def test_curves_recommends_the_least_weight_for_the_useless_domain() -> None:
    result = simulate(mixer("curves"), 0)
    useless = NAMES.index(USELESS)
    # Several domains may sit at the floor, equal up to the rounding of the sum to 1.
    assert result.recommended[useless] == pytest.approx(result.recommended.min(), abs=1e-12)
    assert result.recommended[useless] <= 0.05
