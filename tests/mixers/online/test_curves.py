"""``curves``: the per-domain law fit, the planner, and what the mixer refuses."""

from __future__ import annotations

import numpy as np
import pytest

from mixers import DomainSpace, online_method
from mixers.online.base import Feedback
from mixers.online.curves import Curves, LearningCurve, fit_curve, plan_weights
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
