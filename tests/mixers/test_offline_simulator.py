"""The offline simulator itself (``simulator.py``): its loss, noise, optimum and gap closure."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import approx_fprime

from tests.mixers.simulator import HARMFUL, NOISE, USEFUL, make_simulator

KS = (5, 10, 17)


@pytest.mark.parametrize("k", KS)
def test_the_optimum_is_a_mixture_no_random_mixture_beats(k: int) -> None:
    sim = make_simulator(k, 0)
    w, value = sim.optimum
    assert w.shape == (k,)
    assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-9
    assert value == pytest.approx(float(sim.loss(w)[0]))
    rng = np.random.default_rng(0)
    others = np.vstack(
        [
            rng.dirichlet(np.ones(k), 20_000),
            rng.dirichlet(np.full(k, 0.2), 20_000),
            np.clip(w + rng.normal(0, 0.01, (20_000, k)), 0, None),  # near the optimum
        ]
    )
    others /= others.sum(axis=1, keepdims=True)
    assert sim.loss(others).min() >= value - 1e-9


@pytest.mark.parametrize("k", KS)
def test_the_optimum_avoids_the_harmful_domain_and_favours_the_useful_one(k: int) -> None:
    sim = make_simulator(k, 1)
    w, value = sim.optimum
    assert w[HARMFUL] < 1e-6  # it hurts every target: never worth training on
    assert w[USEFUL] == w.max()  # it helps every target
    assert np.all(np.diag(sim.t[:, sim.targets]) < 0)  # own-domain gains
    assert sim.space().prior.argmax() == HARMFUL  # the token prior points the wrong way
    # A real gap: the optimum is well below uniform, which is well below the prior.
    assert sim.uniform_loss - value > 10 * NOISE * value  # > 10 noise standard deviations
    assert float(sim.loss(sim.space().prior)[0]) > sim.uniform_loss


def test_the_gradient_is_the_loss_gradient() -> None:
    sim = make_simulator(10, 0)
    w = np.random.default_rng(3).dirichlet(np.ones(10))
    numeric = approx_fprime(w, lambda x: float(sim.loss(x)[0]), 1e-7)
    np.testing.assert_allclose(sim._gradient(w), numeric, rtol=1e-4, atol=1e-5)


def test_observations_have_0_3_percent_multiplicative_noise() -> None:
    sim = make_simulator(5, 0)
    w = np.tile(sim.optimum[0], (20_000, 1))
    ratio = sim.observe(w, np.random.default_rng(0)) / sim.loss(w)
    assert abs(ratio.mean() - 1) < 1e-4
    assert ratio.std() == pytest.approx(NOISE, rel=0.03)


def test_gap_closure_is_one_at_the_optimum_and_zero_at_uniform() -> None:
    sim = make_simulator(10, 0)
    assert sim.gap_closure(sim.optimum[0]) == pytest.approx(1.0)
    assert sim.gap_closure(np.full(10, 0.1)) == pytest.approx(0.0)
    assert sim.gap_closure(sim.space().prior) < 0


def test_instances_are_reproducible_and_differ_across_seeds() -> None:
    a, b = make_simulator(10, 0), make_simulator(10, 1)
    assert make_simulator(10, 0) is a  # cached
    w = np.full(10, 0.1)
    again = make_simulator.__wrapped__(10, 0)
    assert float(again.loss(w)[0]) == float(a.loss(w)[0])
    assert float(a.loss(w)[0]) != float(b.loss(w)[0])


def test_the_space_is_unbounded_with_the_token_prior() -> None:
    sim = make_simulator(17, 0)
    space = sim.space()
    assert space.k == 17
    np.testing.assert_array_equal(space.lower, 0.0)
    np.testing.assert_array_equal(space.upper, 1.0)
    np.testing.assert_allclose(space.prior, sim.tokens / sim.tokens.sum())
    assert space.contains(np.full(17, 1 / 17)).all()
