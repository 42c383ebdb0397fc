# ruff: noqa: N803, N806 - X is the conventional name of a design matrix (scikit-learn)
"""``mixing_law``: the Data Mixing Laws exponential form, ``y = c + k * exp(sum_j t_j w_j)``.

Ye et al. (ICLR 2025, ``yegcjs/mixinglaws``) fit ``L_i(r) = c_i + k_i * exp(t_i . r)`` per
validation domain; here one law is fitted to the objective (any target, loss or score).

Fitting: bounded nonlinear least squares (``scipy.optimize.least_squares``, trust-region
reflective, analytic Jacobian) on the standardised target ``z = (y - mean) / std``, from several
deterministic starts: the log-linearised fits ``log(+-(z - c0)) ~ b + t . w`` with the floor
``c0`` half a deviation below (``k > 0``: a loss falling towards a floor) or above (``k < 0``: a
score rising towards a ceiling) the data, plus ``n_starts - 2`` seeded perturbations of them
(``random_state``). The starts race: each gets 25 evaluations, the best then runs to
``max_nfev`` (a start heading for the linear limit ``|k| -> bound``, ``t -> 0`` converges slowly
and loses anyway). On RegMix's 512 runs a fit takes 0.05-0.1 s of CPU.

The simplex collinearity: mixtures sum to 1, so ``t + s`` and ``k * exp(-s)`` predict exactly the
same as ``t`` and ``k`` on every mixture (the exponent's common shift is the log of ``k``, as the
intercept is the common shift of ``linear``'s coefficients). Left alone this is a flat valley
of the loss: the solution is not unique (``t`` and ``k`` end anywhere along it, depending on the
start) and the optimiser wanders along it (on RegMix, fits took twice as long). A small ridge
penalty ``alpha * |t|^2`` removes it: along the valley the fit is constant, so the penalty alone
picks the point, the one with ``mean(t) = 0``. Unlike fixing ``t_K = 0`` (a reference domain) or
``k = +-1`` this keeps the law a full one off the simplex (rows that sum only approximately to
1, or arbitrary ``X`` in scikit-learn's checks), and it is the regularisation the DML
reproduction found mandatory (an unconstrained law on an aggregate loss blew up). It is kept
small (``1e-5``): it also shrinks ``t``, i.e. pulls the law towards a linear one (small ``t``,
large ``k``), and RegMix's cross-validated Spearman falls from 0.960 to 0.952 at ``1e-3``. The
bounds ``|t_j| <= t_bound`` (per unit weight) and ``|c|, |k| <= 1e4`` (in standard deviations
of ``y``) keep every start finite. ``vertex_values_`` gives the shift-free reading: the
prediction at each pure domain.

The optimiser itself (``fit_exponential``) is shared with ``loglinear``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import least_squares
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped]  # sklearn's dep

__all__ = [
    "EXP_CLIP",
    "ExponentialFit",
    "MixingLawRegressor",
    "column_scales",
    "exponential_law",
    "fit_exponential",
    "linearised_start",
    "one_blas_thread",
]

FloatArray = NDArray[np.float64]

EXP_CLIP = 50.0
"""Exponents are clipped to ``[-50, 50]``: every prediction stays finite whatever ``X`` is."""
_COEF_BOUND = 1e4  # |c|, |k| in standard deviations of y (mixing_law)
_TINY = 1e-12


class _OneBlasThread:
    """Process-wide "BLAS on one thread" shared by overlapping fits in several threads: the
    first to enter sets the limit, the last to leave restores the original one (nested
    ``threadpool_limits`` would restore in the wrong order and could leave BLAS at one thread).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.controller: Any = None
        self.limiter: Any = None

    def enter(self) -> None:
        with self.lock:
            if self.depth == 0:
                if self.controller is None:
                    self.controller = ThreadpoolController()
                self.limiter = self.controller.limit(limits=1, user_api="blas")
            self.depth += 1

    def leave(self) -> None:
        with self.lock:
            self.depth -= 1
            if self.depth == 0 and self.limiter is not None:
                self.limiter.restore_original_limits()
                self.limiter = None


_ONE_BLAS_THREAD = _OneBlasThread()


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the block with BLAS limited to one thread (numpy's and scipy's OpenBLAS).

    The matrices here are tiny (a few hundred rows), and OpenBLAS threads on a busy machine
    spin: on a loaded 2-core host one ``mixing_law`` fit on 512 runs took 0.15 s with one
    thread and 2-4 s with two (see ``lightgbm``'s ``n_jobs=1`` for the same effect).
    """
    _ONE_BLAS_THREAD.enter()
    try:
        yield
    finally:
        _ONE_BLAS_THREAD.leave()


def check_law_params(estimator: Any) -> None:
    """The settings the two exponential laws share: ``alpha``, ``t_bound``, ``n_starts`` and
    ``max_nfev``; ``ValueError`` naming the first bad one."""
    alpha, t_bound = float(estimator.alpha), float(estimator.t_bound)
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite number >= 0, got {estimator.alpha}")
    if not (math.isfinite(t_bound) and t_bound > 0):
        raise ValueError(f"t_bound must be a finite number > 0, got {estimator.t_bound}")
    if int(estimator.n_starts) < 1:
        raise ValueError(f"n_starts must be >= 1, got {estimator.n_starts}")
    if int(estimator.max_nfev) < 1:
        raise ValueError(f"max_nfev must be >= 1, got {estimator.max_nfev}")


def column_scales(X: FloatArray) -> FloatArray:
    """``max(1, max |x_j|)`` per column: 1 for mixture weights, taming arbitrary large ``X``."""
    if X.shape[0] == 0:
        return np.ones(X.shape[1])
    scales: FloatArray = np.maximum(1.0, np.max(np.abs(X), axis=0))
    return scales


def _exponent(X: FloatArray, t: FloatArray) -> tuple[FloatArray, NDArray[np.bool_]]:
    """``exp(X t)`` clipped to ``exp(+-EXP_CLIP)``, and where the clip did not bind."""
    with np.errstate(over="ignore", invalid="ignore"):
        u = X @ t
    u = np.nan_to_num(u, nan=0.0, posinf=EXP_CLIP, neginf=-EXP_CLIP)
    inside = np.abs(u) < EXP_CLIP
    return np.exp(np.clip(u, -EXP_CLIP, EXP_CLIP)), inside


def exponential_law(X: FloatArray, c: float, k: float, t: FloatArray) -> FloatArray:
    """``c + k * exp(X t)`` with the exponent clipped (see ``EXP_CLIP``)."""
    e, _ = _exponent(X, t)
    out: FloatArray = c + k * e
    return out


@dataclass(frozen=True)
class ExponentialFit:
    """The best of several bounded least-squares fits of ``z ~ c + k * exp(X t)``."""

    c: float
    k: float
    t: FloatArray
    cost: float
    starts: int
    failures: int


def linearised_start(
    X: FloatArray, z: FloatArray, floor: float, sign: float, ridge: float = 1e-3
) -> FloatArray:
    """A start ``[c, k, t]``: ``c = floor`` and the ridge fit of ``log(sign (z - floor))``.

    ``log(sign * (z - floor)) = log|k| + t . x`` is linear; the centred ridge solve leaves the
    simplex shift of ``t`` out (it picks ``mean(t) = 0``-like solutions, like the penalty).
    """
    n, width = X.shape
    v = np.log(np.maximum(sign * (z - floor), _TINY))
    x_mean, v_mean = X.mean(axis=0), float(v.mean())
    Xc = X - x_mean
    gram = Xc.T @ Xc + ridge * max(n, 1) * np.eye(width)
    try:
        t = np.linalg.solve(gram, Xc.T @ (v - v_mean))
    except np.linalg.LinAlgError:
        t = np.zeros(width)
    t = np.nan_to_num(t)
    b = float(np.clip(v_mean - x_mean @ t, -30.0, 30.0))
    return np.concatenate([[floor, sign * math.exp(b)], t])


def _refit_linear(X: FloatArray, z: FloatArray, t: FloatArray) -> tuple[float, float]:
    """The least-squares ``c, k`` of ``z ~ c + k * exp(X t)`` for a fixed ``t``."""
    e, _ = _exponent(X, t)
    design = np.column_stack([np.ones_like(e), e])
    coef, *_ = np.linalg.lstsq(design, z, rcond=None)
    return float(coef[0]), float(coef[1])


def fit_exponential(
    X: FloatArray,
    z: FloatArray,
    starts: Sequence[FloatArray],
    lower: FloatArray,
    upper: FloatArray,
    *,
    alpha: float,
    loss: str = "linear",
    f_scale: float = 1.0,
    max_nfev: int = 100,
    race_nfev: int = 25,
) -> ExponentialFit:
    """Minimise ``sum_i rho((c + k e^{x_i t} - z_i)^2) / n + alpha |t|^2`` from every start.

    ``lower``/``upper``: bounds of ``[c, k, t...]``; each start is moved strictly inside them.
    Every start runs ``race_nfev`` evaluations; the best then continues up to ``max_nfev``.
    ``loss``/``f_scale``: ``least_squares``'s robust loss, ``f_scale`` in the units of ``z``.
    A start on which the optimiser fails is skipped; if all fail, the result is the constant
    ``mean(z)`` (``k = 0``, ``t = 0``): this never raises on finite data.
    """
    n, width = X.shape
    root_n = math.sqrt(max(n, 1))
    root_alpha = math.sqrt(max(alpha, 0.0))
    penalty_jac = np.hstack([np.zeros((width, 2)), root_alpha * np.eye(width)])

    def residuals(theta: FloatArray) -> FloatArray:
        e, _ = _exponent(X, theta[2:])
        fit = (theta[0] + theta[1] * e - z) / root_n
        return np.concatenate([fit, root_alpha * theta[2:]])

    def jacobian(theta: FloatArray) -> FloatArray:
        e, inside = _exponent(X, theta[2:])
        d_t = (theta[1] * e * inside)[:, None] * X
        top = np.column_stack([np.ones(n), e, d_t]) / root_n
        return np.vstack([top, penalty_jac])

    span = upper - lower

    def solve(x0: FloatArray, budget: int) -> tuple[float, FloatArray, bool] | None:
        x0 = np.clip(np.nan_to_num(x0), lower + 1e-9 * span, upper - 1e-9 * span)
        try:
            with np.errstate(over="ignore", invalid="ignore", under="ignore"):
                result = least_squares(
                    residuals,
                    x0,
                    jac=jacobian,
                    bounds=(lower, upper),
                    method="trf",
                    loss=loss,
                    f_scale=f_scale / root_n,  # the residuals are divided by sqrt(n)
                    x_scale="jac",
                    max_nfev=budget,
                )
        except (ValueError, np.linalg.LinAlgError, FloatingPointError):
            return None
        cost, theta = float(result.cost), np.asarray(result.x, dtype=float)
        if not (math.isfinite(cost) and np.all(np.isfinite(theta))):
            return None
        return cost, theta, int(result.status) > 0

    # A race: every start gets a short budget, then the best one the rest. Starts heading for
    # a poor local optimum (typically the linear limit |k| -> bound, t -> 0, which converges
    # slowly) are not run to the end.
    race = max(1, min(max_nfev, race_nfev)) if len(starts) > 1 else max_nfev
    best: tuple[float, FloatArray, bool] | None = None
    failures = 0
    for start in starts:
        found = solve(start, race)
        if found is None:
            failures += 1
        elif best is None or found[0] < best[0]:
            best = found
    if best is not None and not best[2] and max_nfev > race:
        polished = solve(best[1], max_nfev - race)
        if polished is not None and polished[0] <= best[0]:
            best = polished
    if best is None:
        return ExponentialFit(
            float(np.mean(z)) if n else 0.0, 0.0, np.zeros(width), math.inf, len(starts), failures
        )
    cost, theta, _ = best
    return ExponentialFit(
        float(theta[0]), float(theta[1]), theta[2:].copy(), cost, len(starts), failures
    )


def _standardise(y: FloatArray) -> tuple[FloatArray, float, float]:
    """``(z, centre, spread)`` with ``y = centre + spread * z``; ``spread = 0`` if constant.

    Dividing by ``max |y|`` first keeps the moments finite for any finite ``y``.
    """
    top = float(np.max(np.abs(y))) if y.size else 0.0
    if top == 0.0:
        return np.zeros_like(y), 0.0, 0.0
    y1 = y / top
    centre, spread = float(np.mean(y1)), float(np.std(y1))
    if not spread > 1e-12 * max(1.0, abs(centre)):
        return np.zeros_like(y), centre * top, 0.0
    return (y1 - centre) / spread, centre * top, spread * top


class MixingLawRegressor(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """Data Mixing Laws' ``y = c + k * exp(t . w)``, fitted by bounded least squares.

    Parameters
    ----------
    alpha:
        Ridge penalty on the exponents ``t`` (per run, in standardised ``y`` units): resolves
        the simplex collinearity (see the module docstring) and shrinks ``t``.
    t_bound:
        Bound on each exponent, ``|t_j| <= t_bound`` per unit of weight.
    n_starts:
        Optimiser starts (>= 1): the two log-linearised fits (``k > 0`` and ``k < 0``), then
        seeded perturbations; the lowest final cost wins.
    max_nfev:
        Function evaluations of the best start (the others stop after 25).
    random_state:
        Seed of the perturbed starts; equal seeds and data give identical fits.

    Attributes
    ----------
    intercept_, coef_scale_, exponents_:
        ``c``, ``k`` (in ``y``'s units) and ``t`` (per unit of each column of ``X``).
    vertex_values_:
        The prediction at each pure domain, ``c + k * exp(t_j)``.
    cost_:
        The best start's final objective (standardised units).
    n_features_in_:
        The number of domains seen in ``fit``.
    """

    def __init__(
        self,
        alpha: float = 1e-5,
        t_bound: float = 10.0,
        n_starts: int = 4,
        max_nfev: int = 100,
        random_state: int = 0,
    ) -> None:
        self.alpha = alpha
        self.t_bound = t_bound
        self.n_starts = n_starts
        self.max_nfev = max_nfev
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> MixingLawRegressor:
        X, y = validate_data(self, X, y, y_numeric=True, dtype=np.float64)
        check_law_params(self)
        with one_blas_thread():
            self._fit(X, y)
        return self

    def _fit(self, X: FloatArray, y: FloatArray) -> None:
        width = X.shape[1]
        scales = column_scales(X)
        Xs = X / scales
        z, centre, spread = _standardise(y)
        self.y_centre_: float = centre
        self.y_spread_: float = spread
        self.x_scale_: FloatArray = scales
        if spread == 0.0:  # constant target: the constant law
            self._set(0.0, 0.0, np.zeros(width), cost=0.0)
            return

        starts = [
            linearised_start(Xs, z, float(z.min()) - 0.5, 1.0),
            linearised_start(Xs, z, float(z.max()) + 0.5, -1.0),
        ]
        rng = np.random.default_rng(int(self.random_state))
        for i in range(int(self.n_starts) - 2):
            base = starts[i % 2]
            t0 = base[2:] + rng.normal(0.0, 0.5, size=width)
            c0, k0 = _refit_linear(Xs, z, t0)
            starts.append(np.concatenate([[c0, k0], t0]))
        starts = starts[: int(self.n_starts)]
        bound = float(self.t_bound)
        lower = np.concatenate([[-_COEF_BOUND, -_COEF_BOUND], np.full(width, -bound)])
        upper = np.concatenate([[_COEF_BOUND, _COEF_BOUND], np.full(width, bound)])
        fit = fit_exponential(
            Xs, z, starts, lower, upper, alpha=float(self.alpha), max_nfev=int(self.max_nfev)
        )
        self._set(fit.c, fit.k, fit.t, cost=fit.cost)

    def _set(self, c: float, k: float, t: FloatArray, *, cost: float) -> None:
        """Store the law fitted in standardised units, in ``y``'s units."""
        self.c_std_: float = c
        self.k_std_: float = k
        self.t_std_: FloatArray = np.asarray(t, dtype=float)
        self.intercept_: float = self.y_centre_ + self.y_spread_ * c
        self.coef_scale_: float = self.y_spread_ * k
        self.exponents_: FloatArray = self.t_std_ / self.x_scale_
        self.cost_: float = cost
        # One unit of each domain (a pure mixture), in the scaled units the law was fitted in.
        self.vertex_values_: FloatArray = self._law(np.eye(len(self.t_std_)) / self.x_scale_)

    def to_state(self) -> dict[str, Any]:
        """The fitted law as plain data (``from_state`` rebuilds it)."""
        check_is_fitted(self)
        return {
            "n_features_in": int(self.n_features_in_),
            "y_centre": self.y_centre_,
            "y_spread": self.y_spread_,
            "x_scale": self.x_scale_.tolist(),
            "c": self.c_std_,
            "k": self.k_std_,
            "t": self.t_std_.tolist(),
            "cost": self.cost_,
        }

    @classmethod
    def from_state(cls, params: dict[str, Any], state: dict[str, Any]) -> Self:
        model = cls(**params)
        model.n_features_in_ = int(state["n_features_in"])
        model.y_centre_ = float(state["y_centre"])
        model.y_spread_ = float(state["y_spread"])
        model.x_scale_ = np.asarray(state["x_scale"], dtype=float)
        t = np.asarray(state["t"], dtype=float)
        model._set(float(state["c"]), float(state["k"]), t, cost=float(state["cost"]))
        return model

    def _law(self, Xs: FloatArray) -> FloatArray:
        z = exponential_law(Xs, self.c_std_, self.k_std_, self.t_std_)
        out: FloatArray = self.y_centre_ + self.y_spread_ * z
        return out

    def predict(self, X: Any) -> FloatArray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self._law(X / self.x_scale_)
