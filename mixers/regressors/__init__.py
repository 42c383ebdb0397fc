"""Regressors from a mixture (domain weights) to the objective, selectable by name.

Each entry is a factory ``seed -> estimator``: a fresh, unfitted scikit-learn regressor that takes
numpy ``X`` of shape (n, K) (the weights, in the space's domain order) and ``y`` of shape (n,).
``mixers.fitting`` cross-validates, refits and searches with any of them; ``fit`` model ``auto``
compares every registered one. The values of ``regressor_names()`` are the API's ``model`` names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mixers.regressors.gp import GaussianProcessMixtureRegressor
from mixers.regressors.lightgbm import LightGBMMixtureRegressor
from mixers.regressors.linear import LinearMixtureRegressor
from mixers.regressors.loglinear import LogLinearRegressor
from mixers.regressors.mixing_law import MixingLawRegressor

__all__ = [
    "REGRESSORS",
    "GaussianProcessMixtureRegressor",
    "LightGBMMixtureRegressor",
    "LinearMixtureRegressor",
    "LogLinearRegressor",
    "MixingLawRegressor",
    "RegressorFactory",
    "make_regressor",
    "register_regressor",
    "regressor_names",
]

RegressorFactory = Callable[[int], Any]
"""``seed -> unfitted scikit-learn regressor`` (``RegressorMixin``; typed ``Any``: no stubs)."""

REGRESSORS: dict[str, RegressorFactory] = {}


def register_regressor(name: str, factory: RegressorFactory) -> RegressorFactory:
    """Make ``factory`` selectable as ``name``; registering a different factory twice fails."""
    if name == "auto":
        raise ValueError("'auto' is reserved: it compares every registered regressor")
    if name in REGRESSORS and REGRESSORS[name] is not factory:
        raise ValueError(f"regressor {name!r} is registered twice")
    REGRESSORS[name] = factory
    return factory


def regressor_names() -> list[str]:
    """Every registered regressor, in registration order (the order ``auto`` tries them)."""
    return list(REGRESSORS)


def make_regressor(name: str, seed: int) -> Any:
    """A fresh unfitted regressor; ``KeyError`` for an unknown name."""
    return REGRESSORS[name](seed)


def _linear(seed: int) -> LinearMixtureRegressor:
    del seed  # deterministic
    return LinearMixtureRegressor()


register_regressor("linear", _linear)


def _lightgbm(seed: int) -> LightGBMMixtureRegressor:
    return LightGBMMixtureRegressor(random_state=seed)


register_regressor("lightgbm", _lightgbm)


# The parametric laws and the GP: on small or sparse swarms they rank mixtures far better than
# the trees (Olmix's sparse 24-domain swarm: log-linear 0.90, LightGBM 0.39).


def _mixing_law(seed: int) -> MixingLawRegressor:
    return MixingLawRegressor(random_state=seed)


register_regressor("mixing_law", _mixing_law)


def _loglinear(seed: int) -> LogLinearRegressor:
    return LogLinearRegressor(random_state=seed)


register_regressor("loglinear", _loglinear)


def _gp(seed: int) -> GaussianProcessMixtureRegressor:
    return GaussianProcessMixtureRegressor(random_state=seed)


register_regressor("gp", _gp)
