"""``curves``: the per-domain law fit, the planner, and what the mixer refuses."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mixers import DomainSpace, online_method
from mixers.base import spread_residual
from mixers.online.base import Feedback
from mixers.online.curves import (
    Curves,
    LearningCurve,
    discounted,
    fit_curve,
    plan_weights,
    transfer_prior_matrix,
)
from mixopt.errors import InvalidInput


def test_fit_recovers_a_law_with_transfer_from_varied_allocations() -> None:
    rng = np.random.default_rng(0)
    truth = LearningCurve(0, [1.5, np.log(2.0), np.log(0.5), np.log(0.5), 0.6, 0.0])
    x = np.cumsum(rng.dirichlet(np.ones(3), 30), axis=0)
    y = truth(x)
    fitted = fit_curve(0, x, y, None, transfer_prior=0.001)
    assert np.max(np.abs(fitted(x) - y)) < 1e-3
    later = x[-1] * 2.0
    assert abs(float(fitted(later[None, :])[0]) - float(truth(later[None, :])[0])) < 0.02
    assert fitted.params[4] == pytest.approx(0.6, abs=0.15)  # the transfer from domain 1
    assert fitted.params[5] < 0.15  # and none from domain 2


def test_planner_puts_weight_where_the_marginal_gain_is_and_keeps_the_bounds() -> None:
    # Domain 0 is broad (it trains 1 as well); domain 2 learns nothing.
    curves = Curves(
        [
            LearningCurve(0, [1.0, np.log(2.0), np.log(0.5), 0.0, 0.0, 0.0]),
            LearningCurve(1, [1.0, np.log(2.0), np.log(0.5), 0.0, 0.8, 0.0]),
            LearningCurve(2, [2.0, np.log(1e-6), np.log(0.5), 0.0, 0.0, 0.0]),
        ]
    )
    lower, upper = np.full(3, 0.05), np.array([0.7, 1.0, 1.0])
    w = plan_weights(curves, np.full(3, 1 / 3), np.ones(3), 10.0, lower, upper, np.full(3, 1 / 3))
    assert w.sum() == pytest.approx(1.0)
    assert np.all(w >= lower - 1e-9) and np.all(w <= upper + 1e-9)
    assert w[2] == pytest.approx(0.05, abs=1e-6)  # the useless domain: only its floor
    assert w[0] > w[1]  # the broad domain earns more than its own loss says


def test_curves_needs_the_losses_it_fits_for_every_domain() -> None:
    space = DomainSpace.from_domains([{"name": "a"}, {"name": "b"}])
    mixer = online_method("curves").from_config({})
    with pytest.raises(InvalidInput) as raised:
        mixer.check_feedback(space, Feedback(step=10, eval_losses={"a": 2.0}))
    assert raised.value.errors[0].loc == ("eval_losses",) and "b" in raised.value.errors[0].msg
    train = online_method("curves").from_config({"signal": "train"})
    train.check_feedback(space, Feedback(step=10, train_losses={"a": 2.0, "b": 2.0}))


def test_curves_target_must_name_the_experiments_domains() -> None:
    space = DomainSpace.from_domains([{"name": "a"}, {"name": "b"}])
    mixer = online_method("curves").from_config({"target": {"a": 1.0, "c": 1.0}})
    with pytest.raises(InvalidInput) as raised:
        mixer.check_space(space)
    assert raised.value.errors[0].loc == ("config", "target", "c")
    with pytest.raises(InvalidInput) as zero:
        online_method("curves").from_config({"target": {"a": 0.0}})
    assert zero.value.errors[0].loc == ("config", "target")
    assert "must not all be 0" in zero.value.errors[0].msg


def test_curves_warms_up_on_the_base_mixture_then_steers_within_the_trust_region() -> None:
    space = DomainSpace.from_domains([{"name": n} for n in ("a", "b", "c")])
    mixer = online_method("curves").from_config({"max_shift": 0.1})
    state = mixer.init_state(space, 0)
    first = mixer.decide(space, state)
    assert first.phase == "warmup"
    previous = first.weights
    target = np.array(state["target"])
    steps = np.zeros(3)
    for round_ in range(1, 10):
        # a learns fast from its own data, b slowly, c not at all: weight should leave c.
        steps = steps + previous * 100
        losses = {"a": 3.0 / np.sqrt(1 + steps[0] / 50), "b": 2.0 / np.sqrt(1 + steps[1] / 400)}
        losses["c"] = 2.0
        state = mixer.observe(space, state, Feedback(step=100 * round_, eval_losses=losses))
        decision = mixer.decide(space, state)
        assert np.max(np.abs(np.array(state["target"]) - target)) <= 0.1 + 1e-9
        target = np.array(state["target"])
        previous = decision.weights
    assert decision.phase == "exploit"
    assert state["target"][2] == min(state["target"])


def test_discounted_exposure_is_the_cumulative_allocation_without_forgetting() -> None:
    x = np.cumsum(np.random.default_rng(1).dirichlet(np.ones(3), 8), axis=0)
    assert np.allclose(discounted(x, 0.0), x)
    faded = discounted(x, 0.5)
    # Each round's increment counts e^-0.5 per unit trained since: the latest in full.
    increments = np.diff(x, axis=0, prepend=np.zeros((1, 3)))
    age = x.sum(axis=1)[-1] - x.sum(axis=1)
    assert np.allclose(faded[-1], np.exp(-0.5 * age) @ increments)
    assert np.all(faded[-1] < x[-1])


def test_fit_finds_forgetting_in_a_loss_that_rises_while_its_domain_is_starved() -> None:
    # Domain 0 trains for six rounds, then only domain 1 does: its loss climbs back up.
    shares = np.array([[0.9, 0.1]] * 6 + [[0.0, 1.0]] * 6)
    x = np.cumsum(shares, axis=0)
    truth = LearningCurve(0, [1.0, np.log(2.0), np.log(0.5), 0.0, 0.0, 0.4])
    y = truth(discounted(x, 0.4))
    assert y[-1] > y[5]
    fitted = fit_curve(0, x, y, None, transfer_prior=0.01, forgetting=True)
    assert fitted.params[-1] == pytest.approx(0.4, abs=0.1)
    assert np.max(np.abs(fitted(discounted(x, fitted.params[-1])) - y)) < 0.01
    # Without forgetting the law cannot follow the rise.
    rigid = fit_curve(0, x, y, None, transfer_prior=0.01)
    assert np.max(np.abs(rigid(x) - y)) > 0.05


def test_planner_keeps_training_a_domain_that_forgets() -> None:
    # Two like domains; the first forgets. With no forgetting the planner's best is the even
    # split; forgetting makes its data worth less at the end, but starving it costs more.
    params = [1.0, np.log(2.0), np.log(0.5), 0.0, 0.0]
    steady = Curves([LearningCurve(0, params), LearningCurve(1, params)])
    forgets = Curves([LearningCurve(0, [*params, 0.5]), LearningCurve(1, [*params, 0.0])])
    lower, upper, half = np.full(2, 0.01), np.ones(2), np.full(2, 0.5)
    w = plan_weights(steady, half, np.ones(2), 10.0, lower, upper, np.array([0.3, 0.7]))
    assert w == pytest.approx(half, abs=1e-3)
    kept = np.array([discounted(np.array([[1.0, 1.0]]), 0.5)[-1], [1.0, 1.0]])
    w = plan_weights(forgets, half, kept, 10.0, lower, upper, half)
    assert 0.05 < w[0] < 0.95


def test_shared_transfer_prior_penalises_only_preferences_between_domains() -> None:
    root = transfer_prior_matrix(4, 0.1, 0.001)
    even, skewed = np.full(4, 0.3), np.array([1.2, 0.0, 0.0, 0.0])
    # The same total transfer costs far less spread evenly than from one domain.
    assert np.sum((root @ even) ** 2) < 0.01 * np.sum((root @ skewed) ** 2)
    # It is the closed form of pulling each coefficient to a level g and g towards 0.
    g = 0.1**2 * skewed.sum() / (0.1**2 * 4 + 0.001**2)
    expected = 0.1**2 * np.sum((skewed - g) ** 2) + 0.001**2 * g**2
    assert np.sum((root @ skewed) ** 2) == pytest.approx(expected)
    assert np.allclose(transfer_prior_matrix(3, 0.2, None), 0.2 * np.eye(3))


@given(st.integers(0, 2**32 - 1), st.floats(-1e-4, 1e-4))
def test_planned_weights_sum_to_one_without_leaving_their_bounds(seed: int, error: float) -> None:
    # SLSQP's answer sums to 1 within ~1e-5; dividing by the sum pushed a weight at its
    # lower bound (a min_weight) below it.
    rng = np.random.default_rng(seed)
    lower = rng.uniform(0.0, 0.1, 5) * (rng.random(5) < 0.6)
    upper = np.maximum(lower, rng.uniform(0.3, 1.0, 5))
    share = rng.dirichlet(np.ones(5)) * (rng.random(5) < 0.7)  # some weights at their floor
    w = lower + (1.0 - lower.sum()) * share / max(share.sum(), 1e-12)
    w = np.clip(w * (1.0 + error), lower, upper)
    out = spread_residual(w, lower, upper)
    if upper.sum() >= 1.0:
        assert abs(out.sum() - 1.0) <= 1e-12
        assert np.all(out >= lower - 1e-15) and np.all(out <= upper + 1e-15)
