# ruff: noqa: N806 - X is the conventional name of a design matrix (scikit-learn)
"""The regressors behind ``fit``: scikit-learn conformance and the name registry."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from sklearn.base import clone, is_regressor
from sklearn.utils.estimator_checks import parametrize_with_checks

from mixers.regressors import (
    REGRESSORS,
    LinearMixtureRegressor,
    make_regressor,
    register_regressor,
    regressor_names,
)


# Every check applies (none is inherently inapplicable to a linear regressor), so none is marked;
# the two that pytest may report as skipped skip themselves when pandas or SCIPY_ARRAY_API are
# not installed.
@parametrize_with_checks([LinearMixtureRegressor(), LinearMixtureRegressor(fit_intercept=False)])
def test_passes_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_registry_has_linear_and_makes_fresh_estimators():
    assert "linear" in regressor_names()
    first, second = make_regressor("linear", 0), make_regressor("linear", 0)
    assert first is not second
    assert is_regressor(first)
    assert not hasattr(first, "coef_")  # unfitted


def test_registry_refuses_duplicates_and_auto():
    with pytest.raises(ValueError, match="registered twice"):
        register_regressor("linear", lambda seed: LinearMixtureRegressor())
    with pytest.raises(ValueError, match="reserved"):
        register_regressor("auto", lambda seed: LinearMixtureRegressor())
    # The same factory again is harmless (e.g. a module imported twice).
    register_regressor("linear", REGRESSORS["linear"])
    with pytest.raises(KeyError):
        make_regressor("no-such-model", 0)


def test_linear_recovers_a_mixture_model():
    """On the simplex, the vertex values are the loss of each pure domain."""
    rng = np.random.default_rng(0)
    X = rng.dirichlet(np.ones(4), size=200)
    vertex = np.array([3.0, 2.5, 4.0, 3.2])
    y = X @ vertex
    model = LinearMixtureRegressor().fit(X, y)
    assert model.alpha_ == pytest.approx(min(model.alphas))
    np.testing.assert_allclose(model.vertex_values_, vertex, atol=1e-3)
    np.testing.assert_allclose(model.predict(X), y, atol=1e-4)
    # The intercept makes the fit invariant to the collinearity: same predictions either way.
    plain = LinearMixtureRegressor(fit_intercept=False).fit(X, y)
    np.testing.assert_allclose(plain.predict(X), y, atol=1e-3)


def test_linear_refuses_bad_alphas_and_survives_clone_and_pickle():
    rng = np.random.default_rng(1)
    X, y = rng.dirichlet(np.ones(3), size=30), rng.normal(size=30)
    with pytest.raises(ValueError, match="alphas"):
        LinearMixtureRegressor(alphas=(0.0, 1.0)).fit(X, y)
    with pytest.raises(ValueError, match="alphas"):
        LinearMixtureRegressor(alphas=()).fit(X, y)
    model = clone(LinearMixtureRegressor(alphas=(0.1, 1.0))).fit(X, y)
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.predict(X), model.predict(X))


@pytest.mark.parametrize("name", regressor_names())
def test_every_regressor_rebuilds_from_its_plain_state_with_identical_predictions(name):
    """What a stored fit holds: ``to_state`` is JSON data, ``from_state`` predicts the same."""
    rng = np.random.default_rng(2)
    X = rng.dirichlet(np.ones(5), size=80)
    y = 3.0 + np.exp(X @ np.linspace(-1.0, 1.0, 5)) + rng.normal(0.0, 0.02, size=80)
    model = make_regressor(name, 3).fit(X, y)
    state = json.loads(json.dumps(model.to_state(), allow_nan=True))
    params = json.loads(json.dumps(model.get_params(deep=False)))
    again = type(model).from_state(params, state)
    np.testing.assert_array_equal(again.predict(X), model.predict(X))
