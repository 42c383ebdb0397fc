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

import inspect
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
from mixers.regressors.per_metric import PerMetricRegressor
from mixopt.errors import Conflict, InvalidInput

__all__ = [
    "INTERVAL_LEVEL",
    "MAX_PER_METRIC_TERMS",
    "MIN_RUNS",
    "PER_METRIC_FOLD_FITS",
    "PER_METRIC_REGRESSORS",
    "REPLICATE_DECIMALS",
    "Candidate",
    "CvScores",
    "Fit",
    "MetricModel",
    "MetricTerms",
    "Noise",
    "OutOfFold",
    "Usable",
    "check_model",
    "fit_model",
    "gives_std",
    "predict",
    "predict_with_std",
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
PER_METRIC_REGRESSORS = 2
"""``auto`` fits each metric with up to this many regressors: the best by the aggregate's CV."""
PER_METRIC_FOLD_FITS = 100
"""...as many of them as fit in this many cross-validation fits (metrics x folds each), and at
least one: the count, not the clock, bounds the work, so a busy machine gets the same answer.
RegMix's 13 losses x 5 folds get one regressor, LightGBM: ``auto`` took 68 s on 512 runs
(11 s for the aggregate alone) on the shared 2-core host; a second one, GP, took it to 112 s
for 0.0004 more of cross-validated Spearman."""
MAX_PER_METRIC_TERMS = 32
"""Objectives of more metrics than this are fitted as one number only (the cost grows with m)."""


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
class MetricTerms:
    """An objective that is a weighted sum of metrics, ``y = values @ weights``.

    ``names``: the metrics of non-zero weight; ``weights``: (m,); ``values``: (n, m), each run's
    value of each metric (rows as the runs fitted on).
    """

    names: tuple[str, ...]
    weights: FloatArray
    values: FloatArray

    def rows(self, index: NDArray[np.intp]) -> MetricTerms:
        """The terms of the runs ``index`` only."""
        return MetricTerms(self.names, self.weights, self.values[index])


@dataclass(frozen=True)
class MetricModel:
    """One metric of a per-metric fit: its weight, its regressor and that regressor's
    cross-validated scores on the metric alone."""

    metric: str
    weight: float
    model: str
    spearman: float | None
    mae: float


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
    metric_models: tuple[MetricModel, ...] = ()
    """For a per-metric fit (``estimator`` a ``PerMetricRegressor``): each metric's regressor;
    empty for a fit of the objective as one number."""
    tied: tuple[str, ...] = ()
    """For ``auto``: the candidates within the cross-validation's noise of the best one, the
    chosen model (the first of them in ``TIE_PREFERENCE``) included (``_choose``); empty when
    the best stood alone."""

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
    weights. ``terms``: their per-metric values, when the objective combines several metrics and
    every such run carries them."""

    observations: tuple[Observation, ...]
    X: FloatArray
    y: FloatArray
    run_ids: tuple[str, ...]
    terms: MetricTerms | None = None


def _metric_terms(
    kept: Sequence[Observation], metric_weights: Mapping[str, float] | None
) -> MetricTerms | None:
    """The objective's terms over ``kept``, metrics sorted by name (a store may not keep the
    objective's order); ``None`` for one metric, more than ``MAX_PER_METRIC_TERMS``, or a run
    that lacks a finite value of one (fitted as one number)."""
    if metric_weights is None:
        return None
    weights = {str(name): float(w) for name, w in sorted(metric_weights.items()) if float(w) != 0.0}
    if not 2 <= len(weights) <= MAX_PER_METRIC_TERMS:
        return None
    values = np.array(
        [[float(obs.metrics.get(name, math.nan)) for name in weights] for obs in kept], dtype=float
    ).reshape(len(kept), len(weights))
    if not np.all(np.isfinite(values)):
        return None
    return MetricTerms(tuple(weights), np.array(list(weights.values())), values)


def usable_runs(
    history: Sequence[Observation],
    k: int,
    *,
    minimum: int = MIN_RUNS,
    metric_weights: Mapping[str, float] | None = None,
) -> Usable:
    """The usable runs of ``history`` (mixtures of ``k`` domains), oldest first; ``Conflict``
    when there are fewer than ``minimum``. ``metric_weights``: the objective's metrics and
    weights, for the per-metric terms (``Usable.terms``)."""
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
        terms=_metric_terms(kept, metric_weights),
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
    estimator: Any,
    X: FloatArray,
    y: FloatArray,
    names: Sequence[str],
    seed: int,
    rows: int = _IMPORTANCE_ROWS,
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
        max_samples=min(1.0, rows / len(y)),
        random_state=seed,
    )
    raw = np.clip(np.nan_to_num(np.asarray(result.importances_mean, dtype=float)), 0.0, None)
    total = float(raw.sum())
    shares = raw / total if total > 0 else np.full(len(names), 1.0 / len(names))
    return {name: float(s) for name, s in zip(names, shares, strict=True)}


@dataclass(frozen=True)
class _PerMetric:
    """A per-metric candidate: the regressor of each metric and its out-of-fold predictions
    (n, m)."""

    name: str
    models: tuple[str, ...]
    oof: FloatArray


def _per_metric_candidates(
    X: FloatArray,
    terms: MetricTerms,
    fold: NDArray[np.intp],
    folds: int,
    seed: int,
    regressors: Sequence[str],
) -> list[_PerMetric]:
    """Each metric cross-validated with each of ``regressors`` on the aggregate's folds.

    The candidates: ``per_metric(<regressor>)``, that regressor on every metric (where it fitted
    them all), and ``per_metric(mixed)``, each metric with the regressor of smallest out-of-fold
    squared error on it, when that mixes regressors. Choosing per metric on the same out-of-fold
    predictions flatters ``mixed`` a little (a choice among ``len(regressors)`` per metric).
    """
    n, m = terms.values.shape
    oof = np.full((len(regressors), n, m), np.nan)
    for r, name in enumerate(regressors):
        for j, metric in enumerate(terms.names):
            try:
                oof[r, :, j] = _cross_validate(name, X, terms.values[:, j], fold, folds, seed)
            except Exception as exc:
                log.warning(
                    "regressor %r failed on metric %r in cross-validation: %s", name, metric, exc
                )
    fitted = np.all(np.isfinite(oof), axis=1)  # (regressors, m)
    found = [
        _PerMetric(f"per_metric({name})", (name,) * m, oof[r])
        for r, name in enumerate(regressors)
        if fitted[r].all()
    ]
    if not fitted.any(axis=0).all():
        return found  # a metric no regressor fitted: no mixed candidate either
    squared = np.where(np.isfinite(oof), (oof - terms.values[None]) ** 2, 0.0)
    errors = np.where(fitted, squared.mean(axis=1), np.inf)
    pick = np.argmin(errors, axis=0)  # per metric; ties to the earlier (better aggregate) one
    if len(set(pick.tolist())) > 1:
        models = tuple(regressors[r] for r in pick)
        found.append(_PerMetric("per_metric(mixed)", models, oof[pick, :, np.arange(m)].T))
    return found


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
    terms: MetricTerms | None = None,
    per_metric_regressors: int = PER_METRIC_REGRESSORS,
) -> Fit:
    """Cross-validate ``model`` (or every registered regressor for ``auto``), refit on all runs.

    ``terms``: the objective's metrics, when it is their weighted sum (``y = values @ weights``).
    ``auto`` then also fits each metric on its own with the ``per_metric_regressors`` best
    regressors of the aggregate's cross-validation (as many as ``PER_METRIC_FOLD_FITS`` allow,
    at least one; ``_per_metric_candidates``) and compares the combined out-of-fold predictions
    with the aggregate candidates' on the same folds, by the same score; a per-metric choice
    refits a ``PerMetricRegressor`` and its intervals come from the combined residuals.

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
    # Every regressor, fold and bootstrap sees the runs in one canonical order (by mixture, then
    # objective), so the fit does not depend on the order they were stored or imported in.
    order = _canonical_order(X, y)
    X, y, run_ids = X[order], y[order], [run_ids[i] for i in order]
    if terms is not None and len(terms.values) == n:
        terms = terms.rows(order)
    groups = _replicate_groups(X)
    n_groups = int(groups.max()) + 1
    if n_groups < 2:
        raise Conflict("every usable run has the same mixture: cross-validation needs two")
    folds = min(folds, n_groups)
    fold = _fold_of(groups, folds, seed)

    if terms is not None and not np.allclose(terms.values @ terms.weights, y, rtol=1e-9):
        raise ValueError("terms.values @ terms.weights is not y: the terms are another objective's")

    tried = known if model == "auto" else [model]
    candidates: list[Candidate] = []
    evaluated: list[tuple[str, FloatArray, dict[str, float | None]]] = []
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
        evaluated.append((name, oof, scores))
    per_metric: dict[str, _PerMetric] = {}
    if model == "auto" and terms is not None and per_metric_regressors > 0:
        ranked = sorted(evaluated, key=lambda e: -_rank(e[2]))  # stable: ties keep their order
        affordable = max(1, PER_METRIC_FOLD_FITS // (len(terms.names) * folds))
        pool = [name for name, _, _ in ranked[: min(per_metric_regressors, affordable)]]
        for found in _per_metric_candidates(X, terms, fold, folds, seed, pool):
            combined = found.oof @ terms.weights
            scores = _scores(y, combined)
            candidates.append(Candidate(found.name, scores["spearman"]))
            evaluated.append((found.name, combined, scores))
            per_metric[found.name] = found
    if not evaluated:
        raise RuntimeError("every regressor failed in cross-validation") from failure
    chosen, oof, scores, tied = _choose(evaluated, y, groups, seed)

    metric_models: tuple[MetricModel, ...] = ()
    importance_rows = _IMPORTANCE_ROWS
    if chosen in per_metric:
        assert terms is not None
        members = per_metric[chosen]
        estimator = PerMetricRegressor(
            terms.names, terms.weights.tolist(), members.models, seed
        ).fit(X, terms.values)
        metric_models = tuple(
            MetricModel(
                metric=metric,
                weight=float(terms.weights[j]),
                model=members.models[j],
                spearman=spearman_or_none(terms.values[:, j], members.oof[:, j]),
                mae=float(np.mean(np.abs(terms.values[:, j] - members.oof[:, j]))),
            )
            for j, metric in enumerate(terms.names)
        )
        # Its predictions cost one member's per metric: permute fewer rows, for the same time.
        importance_rows = max(_IMPORTANCE_ROWS // len(terms.names), 64)
    else:
        estimator = make_regressor(chosen, seed).fit(X, y)
    return Fit(
        model=chosen,
        requested=model,
        estimator=estimator,
        names=names,
        cv=CvScores(folds=folds, **scores),
        candidates=tuple(candidates),
        importance=_importance(estimator, X, y, names, seed, importance_rows) if importance else {},
        noise=_noise(y, groups),
        oof=tuple(  # in the caller's order
            OutOfFold(str(run_ids[i]), float(y[i]), float(oof[i])) for i in np.argsort(order)
        ),
        residual_quantiles=_conformal_offsets(y - oof),
        n_runs=n,
        direction=direction,
        seed=seed,
        seconds=time.perf_counter() - started,
        observed_lower=tuple(float(x) for x in X.min(axis=0)),
        observed_upper=tuple(float(x) for x in X.max(axis=0)),
        metric_models=metric_models,
        tied=tied,
    )


def _canonical_order(X: FloatArray, y: FloatArray) -> NDArray[np.intp]:
    """The rows sorted by their rounded mixture (first domain first), then objective."""
    keys = np.column_stack([np.round(X, REPLICATE_DECIMALS) + 0.0, y])
    return np.asarray(np.lexsort(keys.T[::-1]), dtype=np.intp)


TIE_PREFERENCE = ("mixing_law", "loglinear", "gp", "lightgbm", "linear")
"""Which of tied regressors ``auto`` fits: the simplest that can have an interior optimum
first (the K + 2 parameters of the exponential laws, a smooth GP, 1000 trees), ``linear``
last: fewest parameters, but its minimiser is always a vertex of the search region, which on
the simulators cost up to 0.12 of the gap closed against the law it tied with. Other
registered regressors come after them, and each per-metric candidate after every fit of the
objective as one number."""
TIE_BOOTSTRAPS = 200
"""Paired bootstrap resamples of the runs that measure the noise of a Spearman difference."""

_Evaluated = tuple[str, FloatArray, dict[str, float | None]]


def _simplicity(name: str) -> tuple[int, int]:
    inner = name.removeprefix("per_metric(").removesuffix(")")
    known = TIE_PREFERENCE.index(inner) if inner in TIE_PREFERENCE else len(TIE_PREFERENCE)
    return (int(inner != name), known)


def _choose(
    evaluated: Sequence[_Evaluated], y: FloatArray, groups: NDArray[np.intp], seed: int
) -> tuple[str, FloatArray, dict[str, float | None], tuple[str, ...]]:
    """``auto``'s choice, and the candidates tied with the best (empty when none is).

    The one-standard-error rule (Hastie, Tibshirani and Friedman, *Elements of Statistical
    Learning* 7.10): a candidate whose cross-validated Spearman is below the best one's by at
    most the standard error of that difference is tied with it, and the first of the tied in
    ``TIE_PREFERENCE`` (the simplest with an interior optimum) is chosen. The standard error
    comes from a paired bootstrap over replicate groups (``TIE_BOOTSTRAPS`` resamples, seeded):
    both candidates' out-of-fold predictions on the same resampled runs. Without it, two models
    0.002 apart on RegMix's 512 runs swapped places with the runs' order and moved the
    recommended Pile-CC weight from 0.77 to 0.91; the difference is noise, and the simpler model
    is the steadier bet off the data.
    """
    best = max(evaluated, key=lambda e: _rank(e[2]))  # the first of the best: registration order
    scored = [e for e in evaluated if e[2]["spearman"] is not None]
    if len(scored) < 2 or best[2]["spearman"] is None:
        return (*best, ())
    rng = np.random.default_rng([seed, len(y)])
    n_groups = int(groups.max()) + 1
    predictions = np.column_stack([e[1] for e in scored])
    spearmans = np.full((TIE_BOOTSTRAPS, len(scored)), np.nan)
    for b in range(TIE_BOOTSTRAPS):
        counts = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)
        rows = np.repeat(np.arange(len(y)), counts[groups])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a constant resample: nan, dropped below
            matrix = stats.spearmanr(np.column_stack([y[rows], predictions[rows]])).statistic
        spearmans[b] = np.atleast_2d(matrix)[0, 1:]
    top = next(i for i, e in enumerate(scored) if e[0] == best[0])
    rho = np.array([e[2]["spearman"] for e in scored], dtype=float)
    tied = [
        e
        for i, e in enumerate(scored)
        if rho[top] - rho[i] <= float(np.nanstd(spearmans[:, top] - spearmans[:, i], ddof=1))
    ]
    if len(tied) < 2:
        return (*best, ())
    chosen = min(tied, key=lambda e: _simplicity(e[0]))  # equals: the first, registration order
    return (*chosen, tuple(e[0] for e in tied))


def _rank(scores: Mapping[str, float | None]) -> float:
    """What ``auto`` maximises: the cross-validated Spearman (a failed score ranks last)."""
    spearman = scores["spearman"]
    return spearman if spearman is not None else -math.inf


def predict(result: Fit, X: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``(value, low, high)`` for each row of ``X`` (weights in ``result.names`` order)."""
    X = np.atleast_2d(np.asarray(X, dtype=float))
    if X.shape[1] != len(result.names):
        raise ValueError(f"X must have {len(result.names)} columns, got {X.shape[1]}")
    value = np.asarray(result.estimator.predict(X), dtype=float).ravel()
    q_lo, q_hi = result.residual_quantiles
    return value, value + q_lo, value + q_hi


def predict_with_std(estimator: Any, W: FloatArray) -> tuple[FloatArray, FloatArray] | None:
    """``(mean, std)`` from ``estimator.predict(W, return_std=True)``; ``None`` without it."""
    if not gives_std(estimator):
        return None
    mean, std = estimator.predict(W, return_std=True)
    return np.asarray(mean, dtype=float).ravel(), np.asarray(std, dtype=float).ravel()


def gives_std(estimator: Any) -> bool:
    """Whether ``estimator.predict`` takes ``return_std`` (a predictive standard deviation)."""
    return "return_std" in inspect.signature(estimator.predict).parameters
