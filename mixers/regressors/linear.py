# ruff: noqa: N803, N806 - X is the conventional name of a design matrix (scikit-learn)
"""``linear``: a ridge regression from the mixture weights to the objective.

RegMix's baseline regressor (Spearman about 0.90 on its 1M-parameter proxies). The features are the
raw domain weights. On the simplex they sum to 1, so they are collinear with the intercept: the
coefficients are only determined up to a common shift (``coef + c``, ``intercept - c`` predict the
same on every mixture). The ridge penalty picks the smallest such coefficients, i.e. it shrinks
towards "every domain has the same effect" (a constant prediction), never towards a loss of 0,
which a model without intercept would. ``vertex_values_`` gives the shift-free reading: the
prediction at each pure domain (valid for inputs on the simplex).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import numpy as np
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.linear_model import RidgeCV
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["DEFAULT_ALPHAS", "LinearMixtureRegressor"]

DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-6, 3, 19))
"""Ridge penalties tried by the efficient leave-one-out (GCV) of ``RidgeCV``."""


class LinearMixtureRegressor(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """Ridge regression over the domain weights, its penalty chosen by leave-one-out.

    Parameters
    ----------
    alphas:
        Candidate penalties (all > 0); the one with the best leave-one-out error is used.
    fit_intercept:
        Fit an intercept (recommended; see the module docstring on the simplex collinearity).

    Attributes
    ----------
    coef_, intercept_, alpha_:
        The fitted ridge model and the penalty chosen.
    vertex_values_:
        ``coef_ + intercept_``: the prediction for each pure domain (mixture on one vertex).
    n_features_in_:
        The number of domains seen in ``fit``.
    """

    def __init__(
        self, alphas: Sequence[float] = DEFAULT_ALPHAS, fit_intercept: bool = True
    ) -> None:
        self.alphas = alphas
        self.fit_intercept = fit_intercept

    def fit(self, X: Any, y: Any) -> LinearMixtureRegressor:
        X, y = validate_data(self, X, y, y_numeric=True, dtype=np.float64)
        alphas = np.asarray(self.alphas, dtype=float).ravel()
        if alphas.size == 0 or not np.all(np.isfinite(alphas) & (alphas > 0)):
            raise ValueError(f"alphas must be a non-empty sequence of positive numbers: {alphas}")
        ridge = RidgeCV(alphas=alphas, fit_intercept=self.fit_intercept).fit(X, y)
        self.coef_: NDArray[np.float64] = np.asarray(ridge.coef_, dtype=float)
        self.intercept_: float = float(ridge.intercept_)
        self.alpha_: float = float(ridge.alpha_)
        self.vertex_values_: NDArray[np.float64] = self.coef_ + self.intercept_
        return self

    def to_state(self) -> dict[str, Any]:
        """The fitted model as plain data (``from_state`` rebuilds it)."""
        check_is_fitted(self)
        return {
            "n_features_in": int(self.n_features_in_),
            "coef": self.coef_.tolist(),
            "intercept": self.intercept_,
            "alpha": self.alpha_,
        }

    @classmethod
    def from_state(cls, params: dict[str, Any], state: dict[str, Any]) -> Self:
        model = cls(**params)
        model.n_features_in_ = int(state["n_features_in"])
        model.coef_ = np.asarray(state["coef"], dtype=float)
        model.intercept_ = float(state["intercept"])
        model.alpha_ = float(state["alpha"])
        model.vertex_values_ = model.coef_ + model.intercept_
        return model

    def predict(self, X: Any) -> NDArray[np.float64]:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        out: NDArray[np.float64] = X @ self.coef_ + self.intercept_
        return out
