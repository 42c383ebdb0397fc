"""The update rules and schedules of ODM, DoReMi and Aioli on hand-checked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mixers import DomainSpace, get_method
from mixers.online.aioli import AioliMixer, estimate_interactions, perturbation, sweep_order
from mixers.online.base import Feedback
from mixers.online.doremi import DoremiMixer, doremi_update, excess_losses
from mixers.online.odm import OdmMixer, clean_losses, exploration_rate, odm_policy
from mixopt.errors import InvalidInput


def space(k: int = 3) -> DomainSpace:
    return DomainSpace.from_domains([{"name": f"d{i}"} for i in range(k)])


def test_exploration_rate_is_at_most_1_over_k_and_decays_as_sqrt_ln_k_over_k_t() -> None:
    assert exploration_rate(5, 0) == pytest.approx(0.2)
    assert exploration_rate(5, 1) == pytest.approx(0.2)  # sqrt(ln5/5) > 1/5: capped
    assert exploration_rate(5, 100) == pytest.approx(math.sqrt(math.log(5) / 500))
    assert exploration_rate(1, 10) == 0.0


def test_odm_policy_is_uniform_at_first_and_favours_high_reward() -> None:
    assert np.allclose(odm_policy(np.array([1.0, 5.0, 9.0]), 1), 1 / 3)
    policy = odm_policy(np.array([1.0, 5.0, 9.0]), 200)
    eps = exploration_rate(3, 200)
    assert policy.sum() == pytest.approx(1.0)
    assert np.all(np.diff(policy) > 0) and policy.min() >= eps


def test_odm_learns_nothing_in_warmup_then_rewards_losses_over_their_probability() -> None:
    sp = space()
    mixer = OdmMixer.from_config({"warmup_steps": 100, "smoothing": 0.9})
    state = mixer.init_state(sp, 0)
    assert mixer.decide(sp, state).phase == "warmup"
    losses = {"d0": 3.0, "d1": 1.0, "d2": 2.0}
    state = mixer.observe(sp, state, Feedback(step=100, train_losses=losses))
    assert state["t"] == 0 and all(r == 0 for r in state["rewards"].values())
    assert mixer.decide(sp, state).phase == "exploit"
    state = mixer.observe(sp, state, Feedback(step=200, train_losses={"d0": 3.0, "d1": 1.0}))
    assert state["t"] == 1
    # Played uniform: R = 0.1 * L / (1/3); d2 was omitted and keeps 0.
    assert state["rewards"] == pytest.approx({"d0": 0.9, "d1": 0.3, "d2": 0.0})


def test_clean_losses_drops_garbage() -> None:
    sp = space()
    raw = {"d0": math.nan, "d1": -2.0, "d2": 1e300, "x": 1.0}
    assert clean_losses(sp, raw) == {"d1": 0.0, "d2": 1e6}


def test_doremi_clips_excess_losses_at_zero_and_smooths_its_softmax_update() -> None:
    assert excess_losses({"a": 3.0, "b": 1.0}, {"a": 2.0, "b": 2.0}, {"c": 0.5}) == {
        "a": 1.0,
        "b": 0.0,
        "c": 0.5,
    }
    alpha = doremi_update(np.full(2, 0.5), np.array([1.0, 0.0]), 1.0, 0.0)
    assert alpha == pytest.approx([math.e / (math.e + 1), 1 / (math.e + 1)])
    floored = doremi_update(np.array([0.5, 0.5]), np.array([1e6, 0.0]), 1.0, 1e-3)
    assert floored[1] == pytest.approx(5e-4)


def test_doremi_needs_reference_losses_fitting_the_space_or_a_reference_run() -> None:
    with pytest.raises(InvalidInput):  # a config without a reference parses, but fits no space
        DoremiMixer.from_config({}).check_space(space())
    with pytest.raises(InvalidInput):
        DoremiMixer.parse_config({"reference_losses": {"d0": 1.0}, "typo": 1})
    mixer = DoremiMixer.from_config({"reference_losses": {"d0": 1.0, "zz": 2.0}})
    with pytest.raises(InvalidInput):
        mixer.check_space(space())
    DoremiMixer.from_config({"reference_run": "run-1"}).check_space(space())


def test_doremi_recommend_is_the_time_average() -> None:
    sp = space(2)
    mixer = DoremiMixer.from_config({"reference_losses": {"d0": 1.0, "d1": 1.0}, "smoothing": 0.01})
    state = mixer.init_state(sp, 0)
    played = []
    for step in range(1, 4):
        played.append(mixer.decide(sp, state).weights)
        state = mixer.observe(sp, state, Feedback(step=step, train_losses={"d0": 2.0, "d1": 1.0}))
    assert mixer.recommend(sp, state) == pytest.approx(np.mean(played, axis=0))
    assert mixer.decide(sp, state).weights[0] > mixer.recommend(sp, state)[0] > 0.5


def test_aioli_recovers_a_known_interaction_matrix() -> None:
    sp = space(3)
    truth = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.2, 0.0, 0.5]])
    mixtures = np.array([perturbation(sp, j, 0.6) for j in range(3)])
    drops = truth @ mixtures.T  # drop of eval i after segment j
    a = estimate_interactions(2 * drops, np.full((3, 3), 2.0), mixtures)
    assert a == pytest.approx(truth / truth.sum())


def test_aioli_sweeps_every_domain_lp_rounds_times_then_exploits_then_repeats() -> None:
    sp = space(3)
    mixer = AioliMixer.from_config({"lp_rounds": 2, "lp_steps": 5})
    state = mixer.init_state(sp, 7)
    order = sweep_order(7, 0, 3, 2)
    assert sorted(order[:3]) == sorted(order[3:]) == [0, 1, 2]
    phases = []
    for step in range(1, 9):
        decision = mixer.decide(sp, state)
        phases.append((decision.phase, decision.train_steps))
        evals = {f"d{i}": 3.0 - step * (0.1 if i == 0 else 0.01) for i in range(3)}
        state = mixer.observe(sp, state, Feedback(step=step, eval_losses=evals))
    assert phases[:6] == [("perturb", 5)] * 6
    assert phases[6] == ("exploit", 170)
    assert phases[7] == ("perturb", 5) and state["round"] == 1
    # Every segment lowered d0 most: p leans to whichever domain was trained when it dropped.
    assert np.isclose(sum(state["p"].values()), 1.0)


def test_odm_doremi_and_aioli_are_registered_as_online_methods() -> None:
    for name in ("odm", "doremi", "aioli"):
        assert get_method("online", name).mode == "online"
