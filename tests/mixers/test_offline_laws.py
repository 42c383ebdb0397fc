"""The simulator's other hidden laws (power law, saturation with interactions): optimum, gap
closure, gradient, noise and the global Spearman the bench reports."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import approx_fprime

from tests.mixers.simulator import HARMFUL, LAWS, make_law

NEW_LAWS = ("power", "saturating")


@pytest.mark.parametrize("law", NEW_LAWS)
@pytest.mark.parametrize("k", [5, 8])
def test_no_random_mixture_beats_the_optimum_and_uniform_is_well_short_of_it(
    law: str, k: int
) -> None:
    sim = make_law(law, k, 0)
    w, value = sim.optimum
    assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-9
    assert value == pytest.approx(float(sim.loss(w)[0]))
    rng = np.random.default_rng(0)
    others = np.vstack([rng.dirichlet(np.ones(k), 20_000), rng.dirichlet(np.full(k, 0.2), 20_000)])
    assert sim.loss(others).min() >= value - 1e-9
    assert w[HARMFUL] < 1e-6  # the harmful domain is never worth training on
    assert sim.gap_closure(w) == pytest.approx(1.0)
    assert sim.gap_closure(np.full(k, 1 / k)) == pytest.approx(0.0, abs=1e-12)
    assert sim.uniform_loss - value > 0.03 * value  # a real gap: ten 0.3 % noise deviations


@pytest.mark.parametrize("law", NEW_LAWS)
def test_the_gradient_is_the_loss_gradient(law: str) -> None:
    sim = make_law(law, 7, 1)
    w = np.random.default_rng(3).dirichlet(np.ones(7))
    numeric = approx_fprime(w, lambda x: float(sim.loss(x)[0]), 1e-7)
    gradient = sim._gradient(w)
    assert gradient is not None
    np.testing.assert_allclose(gradient, numeric, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("law", sorted(LAWS))
def test_noise_is_multiplicative_at_the_level_asked(law: str) -> None:
    sim = make_law(law, 5, 0)
    w = np.tile(sim.optimum[0], (20_000, 1))
    ratio = sim.observe(w, np.random.default_rng(0), 0.01) / sim.loss(w)
    assert ratio.std() == pytest.approx(0.01, rel=0.03)


def test_the_laws_are_different_functions_of_the_mixture() -> None:
    points = np.random.default_rng(0).dirichlet(np.ones(6), 500)
    values = {law: make_law(law, 6, 0).loss(points) for law in LAWS}
    for a, b in [("exponential", "power"), ("power", "saturating"), ("exponential", "saturating")]:
        assert not np.allclose(values[a], values[b])


def test_global_spearman_is_one_for_the_law_itself_and_low_for_its_opposite() -> None:
    sim = make_law("saturating", 6, 0)
    assert sim.global_spearman(sim.loss) == pytest.approx(1.0)
    assert sim.global_spearman(lambda w: -sim.loss(w)) == pytest.approx(-1.0)
    assert abs(sim.global_spearman(lambda w: w[:, 3])) < 0.9  # one domain's weight: partial
