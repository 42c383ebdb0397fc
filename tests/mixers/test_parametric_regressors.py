# ruff: noqa: N803, N806 - X is the conventional name of a design matrix (scikit-learn)
"""The parametric regressors ``mixing_law`` and ``loglinear`` and the Gaussian process ``gp``.

Conformance, recovery of the function each assumes, robustness, speed, and the two cases that
motivate them: a sparse swarm (Olmix's 24-domain DCLM swarm has 3.3 non-zero domains per run;
there LightGBM ranks mixtures with Spearman 0.39 and log-linear with 0.90) and RegMix's 512 runs
(../shared/data/regmix), where they must not make ``auto`` worse.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import stats
from sklearn.base import clone, is_regressor
from sklearn.utils.estimator_checks import parametrize_with_checks

from mixers.fitting import fit_model, predict
from mixers.regressors import (
    GaussianProcessMixtureRegressor,
    LogLinearRegressor,
    MixingLawRegressor,
    make_regressor,
    regressor_names,
)
from mixers.regressors.gp import negative_log_marginal_likelihood
from tests.regmix_data import regmix_splits

FloatArray = NDArray[np.float64]
PARAMETRIC = ("mixing_law", "loglinear", "gp")


def new_regressors() -> list[Any]:
    """One of each with its registered defaults (seed 0)."""
    return [make_regressor(name, 0) for name in PARAMETRIC]


# --- conformance and the registry ----------------------------------------------------------------


# Small settings keep the ~40 checks per estimator fast; every check applies, so none is marked
# as expected to fail (the two skipped per estimator need pandas or SCIPY_ARRAY_API).
@parametrize_with_checks(
    [
        MixingLawRegressor(n_starts=2, max_nfev=30),
        LogLinearRegressor(n_starts=2, max_nfev=30),
        LogLinearRegressor(huber_delta=None, n_starts=3, max_nfev=30),
        GaussianProcessMixtureRegressor(max_iter=10, max_opt_rows=40),
        GaussianProcessMixtureRegressor(kernel="rbf", n_restarts=1, max_iter=10, max_opt_rows=40),
    ]
)
def test_passes_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_registered_after_linear_and_lightgbm_with_the_seed():
    assert regressor_names()[:5] == ["linear", "lightgbm", *PARAMETRIC]
    classes: dict[str, Any] = {
        "mixing_law": MixingLawRegressor,
        "loglinear": LogLinearRegressor,
        "gp": GaussianProcessMixtureRegressor,
    }
    for name, cls in classes.items():
        model = make_regressor(name, 7)
        assert isinstance(model, cls) and is_regressor(model)
        assert model.get_params()["random_state"] == 7
        assert model is not make_regressor(name, 7)
        assert not hasattr(model, "n_features_in_")  # unfitted


# --- each recovers its own generating function ---------------------------------------------------


def simplex(n: int, k: int, seed: int) -> FloatArray:
    return np.random.default_rng(seed).dirichlet(np.ones(k), size=n)


T_TRUE = np.array([-1.5, 0.8, 0.0, -0.4, 1.2])


@pytest.mark.parametrize(("c", "k"), [(2.0, 0.8), (0.6, -0.3)])
def test_mixing_law_recovers_its_law_up_to_the_simplex_shift(c, k):
    """A loss falling to a floor (k > 0) and a score rising to a ceiling (k < 0), no noise."""
    X, X_new = simplex(200, 5, seed=0), simplex(100, 5, seed=1)

    def law(X):
        return c + k * np.exp(X @ T_TRUE)

    model = MixingLawRegressor().fit(X, law(X))
    np.testing.assert_allclose(model.predict(X_new), law(X_new), atol=2e-3)
    np.testing.assert_allclose(model.vertex_values_, c + k * np.exp(T_TRUE), atol=5e-3)
    # t is determined up to a common shift (absorbed into k), the penalty centres it.
    shift = model.exponents_ - T_TRUE
    assert np.ptp(shift) < 0.05
    assert abs(model.exponents_.mean()) < 0.05
    assert model.intercept_ == pytest.approx(c, abs=0.02)
    assert model.coef_scale_ * np.exp(shift.mean()) == pytest.approx(k, rel=0.02)


def test_loglinear_recovers_olmix_parameters():
    """On the simplex Olmix's ``exp(c) + exp(t . w)`` is identifiable: floor and ``t`` come back."""
    X, X_new = simplex(200, 5, seed=2), simplex(100, 5, seed=3)
    floor = 2.0

    def law(X):
        return floor + np.exp(X @ T_TRUE)

    model = LogLinearRegressor().fit(X, law(X))
    np.testing.assert_allclose(model.predict(X_new), law(X_new), rtol=1e-3)
    assert model.shift_ == 0.0
    assert model.floor_ == pytest.approx(floor, abs=0.02)
    np.testing.assert_allclose(model.exponents_ + model.log_scale_, T_TRUE, atol=0.02)


def test_loglinear_is_robust_to_outliers():
    """The Huber loss: three wild runs barely move the law, plain least squares moves more."""
    X, X_new = simplex(120, 5, seed=4), simplex(100, 5, seed=5)
    y = 2.0 + np.exp(X @ T_TRUE) + np.random.default_rng(6).normal(0.0, 0.01, size=120)
    y[:3] += 3.0

    def error(model):
        return float(np.max(np.abs(model.predict(X_new) - (2.0 + np.exp(X_new @ T_TRUE)))))

    huber = LogLinearRegressor(huber_delta=1.0).fit(X, y)
    plain = LogLinearRegressor(huber_delta=None).fit(X, y)
    assert error(huber) < 0.1
    assert error(huber) < error(plain) / 2


def test_gp_learns_the_noise_and_ignores_an_irrelevant_domain():
    rng = np.random.default_rng(7)
    X = rng.uniform(size=(200, 3))
    noise = 0.05
    y = np.sin(3.0 * X[:, 0]) + X[:, 1] ** 2 + rng.normal(0.0, noise, size=200)
    model = GaussianProcessMixtureRegressor().fit(X, y)
    assert model.noise_std_ == pytest.approx(noise, rel=0.3)
    assert model.length_scales_[2] > 5 * max(model.length_scales_[:2])
    X_new = rng.uniform(size=(100, 3))
    truth = np.sin(3.0 * X_new[:, 0]) + X_new[:, 1] ** 2
    mean, std = model.predict(X_new, return_std=True)
    np.testing.assert_array_equal(mean, model.predict(X_new))
    assert float(np.sqrt(np.mean((mean - truth) ** 2))) < 2 * noise
    # The std is that of a run's outcome: at least the noise, not far above it inside the data.
    assert np.all(std >= 0.9 * model.noise_std_)
    assert float(np.median(std)) < 2 * noise


def test_gp_fast_likelihood_matches_scikit_learn():
    """The hand-written marginal likelihood and gradient are scikit-learn's, for both kernels."""
    rng = np.random.default_rng(8)
    X, y = rng.normal(size=(40, 4)), rng.normal(size=40)
    for kernel in ("matern", "rbf"):
        gp = GaussianProcessMixtureRegressor(kernel=kernel, max_opt_rows=40).fit(X, y)
        theta = gp.kernel_.theta + rng.normal(0.0, 0.5, size=gp.kernel_.theta.shape)
        expected, expected_grad = gp.gp_.log_marginal_likelihood(theta, eval_gradient=True)
        Xs = (X - gp.x_centre_) / gp.x_spread_
        z = (y / gp.y_unit_ - np.mean(y / gp.y_unit_)) / np.std(y / gp.y_unit_)
        value, grad = negative_log_marginal_likelihood(theta, Xs, z, kernel)
        assert value == pytest.approx(-expected, rel=1e-10)
        np.testing.assert_allclose(grad, -expected_grad, rtol=1e-8, atol=1e-10)


# --- robustness, determinism, speed --------------------------------------------------------------


@pytest.mark.parametrize("name", PARAMETRIC)
def test_never_raises_on_awkward_finite_data(name):
    rng = np.random.default_rng(9)
    X = simplex(30, 4, seed=10)
    y = 3.0 + X @ np.array([0.5, -1.0, 0.2, 0.0]) + rng.normal(0.0, 0.01, size=30)
    cases = {
        "constant": (X, np.full(30, 4.2)),
        "two rows": (X[:2], y[:2]),
        "one row": (X[:1], y[:1]),
        "negative": (X, -y),
        "huge": (X, 1e12 + 1e10 * y),
        "tiny": (X, 1e-12 * y),
        "outliers": (X, np.where(np.arange(30) < 2, 1e6, y)),
        "duplicates": (np.repeat(X[:5], 6, axis=0), np.repeat(y[:5], 6)),
        "wild X": (X * 1e6, y),
    }
    for case, (X_fit, y_fit) in cases.items():
        model = make_regressor(name, 0).fit(X_fit, y_fit)
        pred = model.predict(np.vstack([X, X * 1e6]))
        assert np.all(np.isfinite(pred)), case
    constant = make_regressor(name, 0).fit(X, np.full(30, 4.2))
    np.testing.assert_allclose(constant.predict(X), 4.2, rtol=1e-9)


@pytest.mark.parametrize("name", PARAMETRIC)
def test_scale_of_the_target_does_not_matter(name):
    """Fitting ``a y`` (a > 0) predicts ``a`` times the fit of ``y`` (targets standardised)."""
    X = simplex(60, 4, seed=11)
    y = 2.0 + np.exp(X @ np.array([-1.0, 0.5, 0.0, 0.3]))
    base = make_regressor(name, 0).fit(X, y).predict(X)
    for a in (1e-9, 1e9):
        scaled = make_regressor(name, 0).fit(X, a * y).predict(X)
        np.testing.assert_allclose(scaled / a, base, rtol=1e-4)
    assert stats.spearmanr(y, base).statistic > 0.99


@pytest.mark.parametrize("name", PARAMETRIC)
def test_deterministic_and_picklable(name):
    X = simplex(80, 6, seed=12)
    y = 1.0 + np.exp(X @ np.linspace(-1.0, 1.0, 6)) + np.random.default_rng(13).normal(0, 0.02, 80)
    model = make_regressor(name, 3).fit(X, y)
    pred = model.predict(X)
    np.testing.assert_array_equal(clone(model).fit(X, y).predict(X), pred)
    np.testing.assert_array_equal(make_regressor(name, 3).fit(X, y).predict(X), pred)
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.predict(X), pred)


@pytest.mark.parametrize("name", ["mixing_law", "loglinear", "gp"])
def test_fits_512_runs_of_17_domains(name):
    """Typical CPU seconds (bench/mixers_speed.py): mixing_law and loglinear 0.05-0.1, gp
    0.2-0.5 (one thread)."""
    rng = np.random.default_rng(14)
    X = rng.dirichlet(np.full(17, 0.5), size=512)
    y = 3.0 + np.exp(X @ rng.uniform(-1.0, 1.0, size=17)) + rng.normal(0.0, 0.02, size=512)
    model = make_regressor(name, 0).fit(X, y)
    assert stats.spearmanr(y, model.predict(X)).statistic > 0.9


def test_refuses_bad_parameters():
    X, y = simplex(10, 3, seed=15), np.arange(10.0)
    for cls, bad in (
        (MixingLawRegressor, {"alpha": -1.0}),
        (MixingLawRegressor, {"t_bound": 0.0}),
        (MixingLawRegressor, {"n_starts": 0}),
        (LogLinearRegressor, {"huber_delta": 0.0}),
        (LogLinearRegressor, {"max_nfev": 0}),
        (GaussianProcessMixtureRegressor, {"kernel": "linear"}),
        (GaussianProcessMixtureRegressor, {"length_scale_bounds": (0.0, 1.0)}),
        (GaussianProcessMixtureRegressor, {"n_restarts": -1}),
    ):
        with pytest.raises(ValueError):
            cls(**bad).fit(X, y)


# --- a sparse swarm: parametric models beat the trees --------------------------------------------


def sparse_swarm(seed: int, k: int = 20, n: int = 48) -> tuple[FloatArray, FloatArray]:
    """``n`` runs over ``k`` domains, each mixing 2-4 of them (Dirichlet(1) over those), and a
    log-linear loss ``2 + exp(t . w)`` plus noise (std 0.01)."""
    rng = np.random.default_rng(seed)
    X = np.zeros((n, k))
    for row in X:
        active = rng.choice(k, size=int(rng.integers(2, 5)), replace=False)
        row[active] = rng.dirichlet(np.ones(len(active)))
    t = rng.uniform(-1.5, 1.0, size=k)
    return X, 2.0 + np.exp(X @ t) + rng.normal(0.0, 0.01, size=n)


def test_sparse_swarm_auto_picks_a_parametric_model_over_lightgbm():
    """Published (Olmix's DCLM swarm, 127 runs, 24 domains): LightGBM 0.39, log-linear 0.90.

    Here (48 runs, 20 domains, 3 non-zero per run): LightGBM about 0.63, the laws about 0.99.
    """
    X, y = sparse_swarm(seed=0)
    assert (X > 0).sum(axis=1).mean() < 3.5
    names = [f"d{j}" for j in range(X.shape[1])]
    result = fit_model(X, y, [f"run-{i}" for i in range(len(y))], names=names, seed=0)
    scores = {c.model: c.spearman or -1.0 for c in result.candidates}
    assert result.model in PARAMETRIC
    assert result.cv.spearman is not None
    assert result.cv.spearman == scores[result.model] == max(scores.values())
    assert result.cv.spearman >= 0.95
    assert result.cv.spearman >= scores["lightgbm"] + 0.2
    assert min(scores[name] for name in ("mixing_law", "loglinear")) >= scores["lightgbm"] + 0.2


# --- RegMix: the real proxy runs -----------------------------------------------------------------


@pytest.fixture(scope="module")
def regmix() -> dict[str, Any]:
    return regmix_splits()


def held_out_spearman(model: Any, regmix: dict[str, Any]) -> float:
    return float(stats.spearmanr(regmix["y_test"], model.predict(regmix["X_test"])).statistic)


@pytest.mark.parametrize(
    ("name", "floor"), [("mixing_law", 0.95), ("loglinear", 0.95), ("gp", 0.98)]
)
def test_ranks_regmix_held_out_runs_at_spearman_0_95_or_0_98_for_gp(regmix, name, floor):
    """Fitted on the 512 train runs, ranking the 256 test mixtures (Pile-CC loss).

    Measured: mixing_law 0.965, loglinear 0.966, gp 0.986 (linear 0.90, LightGBM 0.99).
    """
    model = make_regressor(name, 0).fit(regmix["X"], regmix["y"])
    assert held_out_spearman(model, regmix) >= floor


@pytest.mark.slow
def test_regmix_auto_stays_within_002_of_the_best_single_regressor(regmix):
    """All five regressors cross-validated on 512 runs (~8 s): auto keeps its quality."""
    result = fit_model(regmix["X"], regmix["y"], regmix["ids"], names=regmix["names"], seed=0)
    scores = {c.model: c.spearman or -1.0 for c in result.candidates}
    assert set(scores) >= {"linear", "lightgbm", *PARAMETRIC}
    assert result.cv.spearman is not None
    assert result.cv.spearman >= max(scores.values()) - 0.02
    assert scores["gp"] >= 0.97 and scores["mixing_law"] >= 0.94 and scores["loglinear"] >= 0.94
    value, _, _ = predict(result, regmix["X_test"])
    auto_rho = float(stats.spearmanr(regmix["y_test"], value).statistic)
    singles = [
        held_out_spearman(make_regressor(name, 0).fit(regmix["X"], regmix["y"]), regmix)
        for name in scores
    ]
    assert auto_rho >= max(singles) - 0.02
