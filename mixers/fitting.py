# ruff: noqa: N803, N806 - X is the conventional name of a design matrix (scikit-learn)
"""Offline fitting: cross-validate a regressor, refit it on every run, predict with intervals.

Pure: numpy arrays in, a frozen ``Fit`` out. The service maps a ``Fit`` to the contract's
FitReport, stores it (``mixers.persistence``) for ``/predict``, and stores the search's answer
(``mixers.recommendation``) as the Recommendation.

Intervals (split-conformal / CV+ style): the out-of-fold residuals ``y - oof`` of the chosen
model give ``q_lo`` and ``q_hi``, the finite-sample conformal order statistics for 10 % in each
tail, and a prediction ``p`` gets the nominal 80 % interval ``[p + q_lo, p + q_hi]``. The
residuals are those of single runs, so the interval is for the outcome of a run (noise
included), not for the noiseless mean.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats
from sklearn.base import clone
from sklearn.inspection import permutation_importance

from mixers.base import Direction, FloatArray, Observation
from mixers.regressors import make_regressor, regressor_names
from mixopt.errors import Conflict, InvalidInput

__all__ = [
    "INTERVAL_LEVEL",
    "MIN_RUNS",
    "REPLICATE_DECIMALS",
    "Candidate",
    "CvScores",
    "Fit",
    "Noise",
    "OutOfFold",
    "Usable",
    "check_model",
    "fit_model",
    "predict",
    "spearman_or_none",
    "usable_runs",
]

log = logging.getLogger(__name__)

MIN_RUNS = 8
"""Fewer usable runs than this: ``fit_model`` raises ``Conflict`` (409)."""
INTERVAL_LEVEL = 0.8
"""Nominal coverage of the prediction intervals."""
_Z = NormalDist().inv_cdf(0.5 + INTERVAL_LEVEL / 2)  # 1.2816: half-width of an 80 % normal band
REPLICATE_DECIMALS = 9
"""Runs whose weights agree after rounding to this many decimals are replicates."""
_IMPORTANCE_ROWS = 256
_IMPORTANCE_REPEATS = 5


@dataclass(frozen=True)
class CvScores:
    """Cross-validated scores of out-of-fold predictions (``None`` where undefined, e.g. the
    Spearman of constant predictions)."""

    folds: int
    spearman: float | None
    pearson: float | None
    mae: float | None
    r2: float | None


@dataclass(frozen=True)
class Candidate:
    """A regressor ``auto`` compared, with its cross-validated Spearman (``None``: it failed)."""

    model: str
    spearman: float | None


@dataclass(frozen=True)
class Noise:
    """Run-to-run spread estimated from replicates (runs on the same mixture)."""

    replicate_groups: int
    std: float | None


@dataclass(frozen=True)
class OutOfFold:
    run_id: str
    actual: float
    predicted: float


@dataclass(frozen=True)
class Fit:
    """A fitted regressor and its cross-validation.

    ``names``: the regressor's feature names (the domains, or for ``quadmix`` the domains and
    the encoded sampling parameters). ``candidates``: every regressor compared (one unless
    ``requested`` is ``auto``). ``importance``: feature -> share, summing to 1 (empty when not
    computed). ``oof``: one per run, in input order. ``residual_quantiles``: ``(q_lo, q_hi)``,
    the interval offsets. ``observed_lower``/``observed_upper``: each feature's smallest and
    largest value among the runs fitted on (the search's trust region).
    """

    model: str
    requested: str
    estimator: Any
    names: tuple[str, ...]
    cv: CvScores
    candidates: tuple[Candidate, ...]
    importance: Mapping[str, float]
    noise: Noise
    oof: tuple[OutOfFold, ...]
    residual_quantiles: tuple[float, float]
    n_runs: int
    direction: Direction = "minimize"
    seed: int = 0
    seconds: float = 0.0
    observed_lower: tuple[float, ...] = ()
    observed_upper: tuple[float, ...] = ()

    @property
    def interval_sigma(self) -> float:
        """The predictive standard deviation of one run's outcome, for normal approximations.

        ``max(noise std, (q_hi - q_lo) / (2 z))`` with ``z = 1.2816`` (80 % two-sided).
        """
        q_lo, q_hi = self.residual_quantiles
        return max(float(self.noise.std or 0.0), (q_hi - q_lo) / (2 * _Z))


@dataclass(frozen=True)
class Usable:
    """The runs a fit learns from: completed, not excluded, with a finite objective and finite
    weights."""

    observations: tuple[Observation, ...]
    X: FloatArray
    y: FloatArray
    run_ids: tuple[str, ...]


def usable_runs(history: Sequence[Observation], k: int, *, minimum: int = MIN_RUNS) -> Usable:
    """The usable runs of ``history`` (mixtures of ``k`` domains), oldest first; ``Conflict``
    when there are fewer than ``minimum``."""
    kept = tuple(
        obs
        for obs in history
        if obs.status == "completed"
        and not obs.excluded
        and obs.objective is not None
        and math.isfinite(obs.objective)
        and np.all(np.isfinite(obs.weights))
    )
    if len(kept) < minimum:
        raise Conflict(
            f"fewer than {minimum} usable runs (completed, not excluded, with "
            f"every objective metric): {len(kept)}"
        )
    return Usable(
        observations=kept,
        X=np.array([np.asarray(obs.weights, dtype=float) for obs in kept]).reshape(-1, k),
        y=np.array([obs.objective for obs in kept], dtype=float),
        run_ids=tuple(obs.run_id or str(i) for i, obs in enumerate(kept)),
    )


def check_model(model: str, *, field: str = "model") -> None:
    """``auto`` or a registered regressor, else ``InvalidInput`` at ``(field,)``."""
    known = regressor_names()
    if model != "auto" and model not in known:
        raise InvalidInput.at(
            (field,), f"unknown model {model!r}; known: {', '.join(['auto', *known])}"
        )


# --- fitting -------------------------------------------------------------------------------------


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def spearman_or_none(y: FloatArray, pred: FloatArray) -> float | None:
    """Spearman's rank correlation, ``None`` where it is undefined (constant input)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: scipy warns and returns nan
        return _finite_or_none(float(stats.spearmanr(y, pred).statistic))


def _scores(y: FloatArray, pred: FloatArray) -> dict[str, float | None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: scipy warns and returns nan
        pearson = float(stats.pearsonr(y, pred).statistic)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    ss_res = float(np.sum((y - pred) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan
    return {
        "spearman": spearman_or_none(y, pred),
        "pearson": _finite_or_none(pearson),
        "mae": float(np.mean(np.abs(y - pred))),
        "r2": _finite_or_none(r2),
    }


def _replicate_groups(X: FloatArray) -> NDArray[np.intp]:
    """Group index per run: runs with the same (rounded) mixture share one."""
    key = np.round(X, REPLICATE_DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0
    _, inverse = np.unique(key, axis=0, return_inverse=True)
    return np.asarray(inverse, dtype=np.intp).ravel()


def _noise(y: FloatArray, groups: NDArray[np.intp]) -> Noise:
    """Pooled within-group standard deviation over the replicate groups (size >= 2)."""
    sizes = np.bincount(groups)
    replicated = np.flatnonzero(sizes >= 2)
    if len(replicated) == 0:
        return Noise(replicate_groups=0, std=None)
    means = np.bincount(groups, weights=y) / sizes
    in_group = np.isin(groups, replicated)
    ss = float(np.sum((y[in_group] - means[groups[in_group]]) ** 2))
    dof = int(np.sum(sizes[replicated] - 1))
    return Noise(replicate_groups=len(replicated), std=math.sqrt(ss / dof))


def _fold_of(groups: NDArray[np.intp], folds: int, seed: int) -> NDArray[np.intp]:
    """Shuffled, seeded K-fold over replicate groups: replicates never straddle a split."""
    n_groups = int(groups.max()) + 1
    order = np.random.default_rng(seed).permutation(n_groups)
    fold_of_group = np.empty(n_groups, dtype=np.intp)
    fold_of_group[order] = np.arange(n_groups) % folds
    return fold_of_group[groups]


def _cross_validate(
    name: str, X: FloatArray, y: FloatArray, fold: NDArray[np.intp], folds: int, seed: int
) -> FloatArray:
    """Out-of-fold predictions of a fresh regressor per fold."""
    template = make_regressor(name, seed)
    oof = np.empty_like(y)
    for k in range(folds):
        test = fold == k
        model = clone(template).fit(X[~test], y[~test])
        oof[test] = np.asarray(model.predict(X[test]), dtype=float).ravel()
    if not np.all(np.isfinite(oof)):
        raise ValueError(f"regressor {name!r} predicted non-finite values")
    return oof


def _conformal_offsets(residuals: FloatArray) -> tuple[float, float]:
    """Split-conformal residual quantiles: 10 % of the mass in each tail (finite-sample order)."""
    r = np.sort(residuals)
    n = len(r)
    tail = (1.0 - INTERVAL_LEVEL) / 2
    k_lo = min(max(math.floor(tail * (n + 1)), 1), n)  # 1-based order statistics
    k_hi = max(min(math.ceil((1.0 - tail) * (n + 1)), n), 1)
    return float(r[k_lo - 1]), float(r[k_hi - 1])


def _importance(
    estimator: Any, X: FloatArray, y: FloatArray, names: Sequence[str], seed: int
) -> dict[str, float]:
    """Permutation importance on the training data (any estimator), clipped at 0, summing to 1.

    A model that ignores every domain (all importances 0) gets the uniform 1/K. Each repeat
    permutes at most ``_IMPORTANCE_ROWS`` runs: K x repeats x n predictions were the largest
    part of a 1000-tree fit on RegMix's 512 runs (about 3 s); on 256 of them it costs half, and
    the domains' order barely moves (Spearman 0.99 between the two, the same top five).
    """
    result = permutation_importance(
        estimator,
        X,
        y,
        scoring="neg_mean_squared_error",
        n_repeats=_IMPORTANCE_REPEATS,
        max_samples=min(1.0, _IMPORTANCE_ROWS / len(y)),
        random_state=seed,
    )
    raw = np.clip(np.nan_to_num(np.asarray(result.importances_mean, dtype=float)), 0.0, None)
    total = float(raw.sum())
    shares = raw / total if total > 0 else np.full(len(names), 1.0 / len(names))
    return {name: float(s) for name, s in zip(names, shares, strict=True)}


def fit_model(
    X: FloatArray,
    y: FloatArray,
    run_ids: Sequence[str],
    *,
    model: str = "auto",
    names: Sequence[str],
    seed: int,
    folds: int = 5,
    direction: Direction = "minimize",
    importance: bool = True,
) -> Fit:
    """Cross-validate ``model`` (or every registered regressor for ``auto``), refit on all runs.

    ``X``: (n, K) weights in ``names`` order; ``y``: the objective of each run; ``run_ids``: the
    runs' ids (for the out-of-fold report). The caller passes the usable runs only (completed,
    not excluded, finite objective). ``importance=False`` skips the permutation importance (the
    report's ``importance`` is then empty). Raises ``Conflict`` for fewer than 8 runs (or a single
    distinct mixture), ``InvalidInput`` at ``("model",)`` for an unknown model.
    """
    started = time.perf_counter()
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float).ravel()
    names = tuple(str(n) for n in names)
    if X.ndim != 2 or X.shape[1] != len(names):
        raise ValueError(f"X must have shape (n, {len(names)}), got {X.shape}")
    if len(y) != len(X) or len(run_ids) != len(X):
        raise ValueError(f"X, y and run_ids differ in length: {len(X)}, {len(y)}, {len(run_ids)}")
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
        raise ValueError("X and y must be finite (pass only usable runs)")
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")

    check_model(model)
    known = regressor_names()
    n = len(y)
    if n < MIN_RUNS:
        raise Conflict(f"fewer than {MIN_RUNS} usable runs (got {n})")
    groups = _replicate_groups(X)
    n_groups = int(groups.max()) + 1
    if n_groups < 2:
        raise Conflict("every usable run has the same mixture: cross-validation needs two")
    folds = min(folds, n_groups)
    fold = _fold_of(groups, folds, seed)

    tried = known if model == "auto" else [model]
    candidates: list[Candidate] = []
    best: tuple[str, FloatArray, dict[str, float | None]] | None = None
    failure: Exception | None = None
    for name in tried:
        try:
            oof = _cross_validate(name, X, y, fold, folds, seed)
        except Exception as exc:
            if model != "auto":
                raise
            log.warning("regressor %r failed in cross-validation: %s", name, exc)
            candidates.append(Candidate(name, None))
            failure = exc
            continue
        scores = _scores(y, oof)
        candidates.append(Candidate(name, scores["spearman"]))
        rank = scores["spearman"] if scores["spearman"] is not None else -math.inf
        if best is None or rank > (best[2]["spearman"] or -math.inf):
            best = (name, oof, scores)
    if best is None:
        raise RuntimeError("every regressor failed in cross-validation") from failure
    chosen, oof, scores = best

    estimator = make_regressor(chosen, seed).fit(X, y)
    return Fit(
        model=chosen,
        requested=model,
        estimator=estimator,
        names=names,
        cv=CvScores(folds=folds, **scores),
        candidates=tuple(candidates),
        importance=_importance(estimator, X, y, names, seed) if importance else {},
        noise=_noise(y, groups),
        oof=tuple(
            OutOfFold(str(r), float(a), float(p))
            for r, a, p in zip(run_ids, y.tolist(), oof.tolist(), strict=True)
        ),
        residual_quantiles=_conformal_offsets(y - oof),
        n_runs=n,
        direction=direction,
        seed=seed,
        seconds=time.perf_counter() - started,
        observed_lower=tuple(float(x) for x in X.min(axis=0)),
        observed_upper=tuple(float(x) for x in X.max(axis=0)),
    )


def predict(result: Fit, X: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``(value, low, high)`` for each row of ``X`` (weights in ``result.names`` order)."""
    X = np.atleast_2d(np.asarray(X, dtype=float))
    if X.shape[1] != len(result.names):
        raise ValueError(f"X must have {len(result.names)} columns, got {X.shape[1]}")
    value = np.asarray(result.estimator.predict(X), dtype=float).ravel()
    q_lo, q_hi = result.residual_quantiles
    return value, value + q_lo, value + q_hi
