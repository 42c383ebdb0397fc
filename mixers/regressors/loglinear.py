# ruff: noqa: N803, N806 - X is the conventional name of a design matrix (scikit-learn)
"""``loglinear``: Olmix's default regressor, ``y = exp(c) + exp(sum_j t_j w_j)``.

What Olmix does (``allenai/olmix``, ``olmix/fit/utils.py``, ``LogLinearRegressor``): one such law
per metric, fitted on the raw metric with a summed Huber loss (delta 0.02, in the metric's units)
by PyTorch L-BFGS (lr 0.01, history 10, strong-Wolfe line search, up to 100 steps), from 300
starts (``c`` on a grid of 10 values in [-2, 1.5] times 30 random ``t``), keeping the best; no
penalty and no bounds; metrics that go negative are shifted first. The law is a positive floor
``exp(c)`` plus a positive exponential: Data Mixing Laws' ``c + k exp(t . w)`` with ``c > 0`` and
``k > 0``, ``k`` absorbed into ``t`` (on the simplex ``k exp(t . w) = exp((t + log k) . w)``).

The product version keeps the form and the loss and changes the machinery:

* **Units.** The target is divided by its standard deviation (and shifted by ``min(y) - std``
  first if it has values <= 0, so the smallest is one deviation above zero). The law's family is
  invariant to a positive scale, so this changes nothing but the conditioning, and the Huber
  ``delta`` is given in standard deviations (``huber_delta``) instead of raw units, so the same
  default suits a loss of 5 and a score of 0.3.
* **An explicit ``k``.** The fit is ``floor + k exp(t . w)`` with ``floor in [0, max y]`` and
  ``k > 0`` (bounded). On the simplex this is exactly Olmix's law (``exp(c) = floor``, Olmix's
  ``t`` is ``exponents_ + log_scale_``); off it (rows summing only approximately to 1) it stays a
  well-defined function. The collinearity ``k`` brings (``t + s``, ``k e^-s``) is removed by a
  small ridge penalty on ``t``, as in ``mixing_law`` (which see).
* **Optimiser.** Bounded trust-region least squares with the Huber loss (``scipy.optimize.
  least_squares``, analytic Jacobian) from a few deterministic starts: the log-linearised fits
  ``log(y - floor0) ~ log k + t . w`` for a floor one deviation below the data and for a zero
  floor, then seeded random floors and perturbed ``t`` (``random_state``), raced briefly and the
  best polished. A handful of data-driven starts replaces Olmix's 300 random ones: a fit on 512
  runs takes well under a second.
* **Bounds** ``|t_j| <= t_bound`` (the Data Mixing Laws reproduction found bounds or a penalty on
  ``t`` mandatory).
"""

from __future__ import annotations

import math
from typing import Any, Self

import numpy as np
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from mixers.regressors.mixing_law import (
    check_law_params,
    column_scales,
    exponential_law,
    fit_exponential,
    linearised_start,
    one_blas_thread,
)

__all__ = ["LogLinearRegressor"]

FloatArray = NDArray[np.float64]

_K_BOUND = (1e-10, 1e6)  # k, in standard deviations of y


class LogLinearRegressor(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """Olmix's log-linear law ``y = exp(c) + exp(t . w)``, Huber-fitted with bounds.

    Parameters
    ----------
    huber_delta:
        Where the Huber loss turns from quadratic to linear, in standard deviations of ``y``;
        ``None`` fits plain least squares.
    alpha:
        Ridge penalty on the exponents ``t`` (per run, standardised units); see the module
        docstring.
    t_bound:
        Bound on each exponent, ``|t_j| <= t_bound`` per unit of weight.
    n_starts:
        Optimiser starts (>= 1): two log-linearised fits, then seeded random ones.
    max_nfev:
        Function evaluations of the best start (the others get a short race).
    random_state:
        Seed of the random starts; equal seeds and data give identical fits.

    Attributes
    ----------
    floor_:
        The law's floor ``exp(c)`` in ``y``'s units (plus the shift, if ``y`` was shifted).
    shift_:
        What was subtracted from ``y`` to make it positive (0 for a positive target).
    log_scale_, exponents_:
        ``log k`` (in ``y``'s units) and ``t`` (per unit of each column of ``X``): the
        prediction is ``floor_ + exp(log_scale_ + X @ exponents_)``. On the simplex, Olmix's
        ``t`` is ``exponents_ + log_scale_``.
    vertex_values_:
        The prediction at each pure domain.
    cost_:
        The best start's final objective (standardised units).
    n_features_in_:
        The number of domains seen in ``fit``.
    """

    def __init__(
        self,
        huber_delta: float | None = 1.0,
        alpha: float = 1e-5,
        t_bound: float = 10.0,
        n_starts: int = 4,
        max_nfev: int = 100,
        random_state: int = 0,
    ) -> None:
        self.huber_delta = huber_delta
        self.alpha = alpha
        self.t_bound = t_bound
        self.n_starts = n_starts
        self.max_nfev = max_nfev
        self.random_state = random_state

    def _check_params(self) -> None:
        delta = self.huber_delta
        if delta is not None and not (math.isfinite(float(delta)) and float(delta) > 0):
            raise ValueError(f"huber_delta must be None or a finite number > 0, got {delta}")
        check_law_params(self)

    def fit(self, X: Any, y: Any) -> LogLinearRegressor:
        X, y = validate_data(self, X, y, y_numeric=True, dtype=np.float64)
        self._check_params()
        with one_blas_thread():
            self._fit(X, y)
        return self

    def _fit(self, X: FloatArray, y: FloatArray) -> None:
        width = X.shape[1]
        self.x_scale_: FloatArray = column_scales(X)
        Xs = X / self.x_scale_
        # Units: y = shift + unit * u. Dividing by max|y| first keeps the moments finite.
        top = float(np.max(np.abs(y)))
        y1 = y / top if top > 0 else y
        spread = float(np.std(y1))
        low = float(np.min(y1))
        if not spread > 1e-12 * max(1.0, float(np.max(np.abs(y1)))):
            # A constant target: the law at its floor (exp term 0), the floor the constant.
            self.shift_: float = 0.0
            self.unit_: float = 1.0
            self._set(float(np.mean(y)), 0.0, np.zeros(width), cost=0.0)
            return
        shift1 = 0.0 if low > 0 else low - spread
        self.shift_ = shift1 * top
        self.unit_ = spread * top
        u = (y1 - shift1) / spread  # > 0, standard deviation 1

        u_min, u_max = float(u.min()), float(u.max())
        floors = [max(0.0, u_min - 1.0), 0.0]
        rng = np.random.default_rng(int(self.random_state))
        starts = [linearised_start(Xs, u, f, 1.0) for f in floors]
        for _ in range(int(self.n_starts) - 2):
            floor = float(rng.uniform(0.0, 1.0)) * max(0.0, u_min - 0.1)
            start = linearised_start(Xs, u, floor, 1.0)
            start[2:] += rng.normal(0.0, 0.3, size=width)
            starts.append(start)
        starts = starts[: int(self.n_starts)]

        bound = float(self.t_bound)
        lower = np.concatenate([[0.0, _K_BOUND[0]], np.full(width, -bound)])
        upper = np.concatenate([[u_max, _K_BOUND[1]], np.full(width, bound)])
        delta = self.huber_delta
        fit = fit_exponential(
            Xs,
            u,
            starts,
            lower,
            upper,
            alpha=float(self.alpha),
            loss="linear" if delta is None else "huber",
            f_scale=1.0 if delta is None else float(delta),
            max_nfev=int(self.max_nfev),
        )
        if math.isinf(fit.cost):  # every start failed: the constant mean
            self._set(float(np.mean(y)), 0.0, np.zeros(width), cost=math.inf)
            return
        self._set(self.shift_ + self.unit_ * fit.c, fit.k, fit.t, cost=fit.cost)

    def _set(self, floor: float, k: float, t: FloatArray, *, cost: float) -> None:
        """Store the law: ``y = floor + unit * k * exp(t . x_scaled)``."""
        self.floor_: float = floor
        self.k_std_: float = k
        self.t_std_: FloatArray = np.asarray(t, dtype=float)
        self.log_scale_: float = (
            math.log(k) + math.log(self.unit_) if k > 0 and self.unit_ > 0 else -math.inf
        )
        self.exponents_: FloatArray = self.t_std_ / self.x_scale_
        self.cost_: float = cost
        self.vertex_values_: FloatArray = self._law(np.eye(len(self.t_std_)) / self.x_scale_)

    def to_state(self) -> dict[str, Any]:
        """The fitted law as plain data (``from_state`` rebuilds it)."""
        check_is_fitted(self)
        return {
            "n_features_in": int(self.n_features_in_),
            "x_scale": self.x_scale_.tolist(),
            "shift": self.shift_,
            "unit": self.unit_,
            "floor": self.floor_,
            "k": self.k_std_,
            "t": self.t_std_.tolist(),
            "cost": self.cost_,
        }

    @classmethod
    def from_state(cls, params: dict[str, Any], state: dict[str, Any]) -> Self:
        model = cls(**params)
        model.n_features_in_ = int(state["n_features_in"])
        model.x_scale_ = np.asarray(state["x_scale"], dtype=float)
        model.shift_ = float(state["shift"])
        model.unit_ = float(state["unit"])
        t = np.asarray(state["t"], dtype=float)
        model._set(float(state["floor"]), float(state["k"]), t, cost=float(state["cost"]))
        return model

    def _law(self, Xs: FloatArray) -> FloatArray:
        out: FloatArray = self.floor_ + self.unit_ * exponential_law(
            Xs, 0.0, self.k_std_, self.t_std_
        )
        return out

    def predict(self, X: Any) -> FloatArray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self._law(X / self.x_scale_)
