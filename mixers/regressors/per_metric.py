# ruff: noqa: N803, N806 - X is the conventional name of a design matrix (scikit-learn)
"""One regressor per metric of the objective, their predictions combined with its weights.

An objective that is a weighted sum of metrics (the mean of per-domain validation losses, say)
can be fitted as one number or, as Data Mixing Laws does (one law per validation domain), metric
by metric: each metric follows its own simpler law, and the sum of the fits predicts the sum.
On RegMix's 512 runs with the mean of the 13 per-domain losses as objective, LightGBM per domain
cross-validates at about half the relative error of one LightGBM on the mean
(``bench/methods.py``, section "per-metric vs aggregate").

Not a registered regressor: it learns from each run's metrics, not from the objective alone, so
``mixers.fitting`` builds it (``auto``'s per-metric candidates); ``mixers.persistence`` stores
it as its members' own states.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import numpy as np
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from mixers.regressors import make_regressor

__all__ = ["PerMetricRegressor"]


class PerMetricRegressor(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """``sum_j weights[j] * f_j(X)`` with ``f_j`` the registered regressor ``models[j]`` fitted
    to metric ``metrics[j]``.

    Parameters
    ----------
    metrics:
        The metrics' names, in the order of ``Y``'s columns.
    weights:
        Each metric's weight in the objective.
    models:
        The registered regressor fitted to each metric.
    random_state:
        The seed every member is made with.

    Attributes
    ----------
    estimators_:
        The fitted member per metric.
    n_features_in_:
        The number of features seen in ``fit``.
    """

    def __init__(
        self,
        metrics: Sequence[str] = (),
        weights: Sequence[float] = (),
        models: Sequence[str] = (),
        random_state: int = 0,
    ) -> None:
        self.metrics = metrics
        self.weights = weights
        self.models = models
        self.random_state = random_state

    def _check_members(self) -> None:
        m = len(self.metrics)
        if m == 0 or len(self.weights) != m or len(self.models) != m:
            raise ValueError(
                f"metrics, weights and models must be non-empty and of one length: "
                f"{len(self.metrics)}, {len(self.weights)}, {len(self.models)}"
            )

    def fit(self, X: Any, Y: Any) -> PerMetricRegressor:
        """Fit member ``j`` to column ``j`` of ``Y`` (n, m): the runs' values of each metric."""
        self._check_members()
        X, Y = validate_data(self, X, Y, multi_output=True, y_numeric=True, dtype=np.float64)
        Y = np.asarray(Y, dtype=float).reshape(len(X), -1)
        if Y.shape[1] != len(self.metrics):
            raise ValueError(f"Y has {Y.shape[1]} columns for {len(self.metrics)} metrics")
        self.estimators_: list[Any] = [
            make_regressor(model, int(self.random_state)).fit(X, Y[:, j])
            for j, model in enumerate(self.models)
        ]
        return self

    @classmethod
    def from_members(cls, params: dict[str, Any], estimators: Sequence[Any]) -> Self:
        """The regressor with already fitted ``estimators`` (one per metric, as stored)."""
        model = cls(**params)
        model._check_members()
        if len(estimators) != len(model.metrics):
            raise ValueError(f"{len(estimators)} members for {len(model.metrics)} metrics")
        model.estimators_ = list(estimators)
        model.n_features_in_ = int(estimators[0].n_features_in_)
        return model

    def predict_metrics(self, X: Any) -> NDArray[np.float64]:
        """Each member's prediction: (n, m), columns in ``metrics`` order."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return np.column_stack(
            [np.asarray(est.predict(X), dtype=float).ravel() for est in self.estimators_]
        )

    def predict(self, X: Any) -> NDArray[np.float64]:
        out: NDArray[np.float64] = self.predict_metrics(X) @ np.asarray(self.weights, dtype=float)
        return out
