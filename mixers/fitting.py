# ruff: noqa: N803, N806 - X is the conventional name of a design matrix (scikit-learn)
"""Offline fitting: cross-validate a regressor, refit it, predict with intervals, search a mixture.

Pure: numpy arrays in, numpy arrays and plain dicts out. The service turns a ``FitResult`` into
the contract's FitReport (``FitResult.report()``), stores the pickled ``FitResult`` for
``/predict``, and stores ``recommend(...)`` (plus ``fit_id``) as the Recommendation.

Intervals (split-conformal / CV+ style): the out-of-fold residuals ``y - oof`` of the chosen
model give ``q_lo`` and ``q_hi``, the finite-sample conformal order statistics for 10 % in each
tail, and a prediction ``p`` gets the nominal 80 % interval ``[p + q_lo, p + q_hi]``. The
residuals are those of single runs, so the interval is for the outcome of a run (noise
included), not for the noiseless mean.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats
from sklearn.base import clone
from sklearn.inspection import permutation_importance

from mixers.base import Direction, DomainSpace, FloatArray
from mixers.regressors import make_regressor, regressor_names
from mixers.sampling import neighbourhood, swarm_samples
from mixers.search import Round, global_then_refine
from mixopt.errors import Conflict, InvalidInput

__all__ = [
    "DISTINCT_L1",
    "INTERVAL_LEVEL",
    "MAX_ALTERNATIVES",
    "MIN_RUNS",
    "REPLICATE_DECIMALS",
    "Direction",
    "FitResult",
    "fit_model",
    "predict",
    "recommend",
    "spearman_or_none",
]

log = logging.getLogger(__name__)

MIN_RUNS = 8
"""Fewer usable runs than this: ``fit_model`` raises ``Conflict`` (409)."""
INTERVAL_LEVEL = 0.8
"""Nominal coverage of the prediction intervals."""
_Z = NormalDist().inv_cdf(0.5 + INTERVAL_LEVEL / 2)  # 1.2816: half-width of an 80 % normal band
REPLICATE_DECIMALS = 9
"""Runs whose weights agree after rounding to this many decimals are replicates."""
DISTINCT_L1 = 0.05
"""Alternatives differ from each other and from the recommendation by more than this (L1)."""
MAX_ALTERNATIVES = 5

# The search draws its global candidates like the proxy swarm of RegMix's design
# (``sampling.swarm_samples``), not like the reference notebook's Dirichlet(prior x 1), which
# differs from the swarm: the model is asked where it saw data.
_CHUNK = 8192
_IMPORTANCE_ROWS = 256
_IMPORTANCE_REPEATS = 5
_POOL = 2048  # best candidates kept for the alternatives
_GLOBAL_SHARE = 0.5  # of the candidates, drawn swarm-like before refining around the best
_REFINE_CONCENTRATIONS = (100.0, 400.0, 1600.0)
_REFINE_CENTRES = 16
_REFINE_DISTINCT_L1 = 0.02
_REFINE_MIN_ALPHA = 0.01


@dataclass(frozen=True)
class FitResult:
    """A fitted regressor and its cross-validation; picklable (the service stores it as a blob).

    ``cv``: ``folds``, ``spearman``, ``pearson``, ``mae``, ``r2`` (``None`` where undefined, e.g.
    Spearman of constant predictions). ``candidates``: ``{"model", "spearman"}`` for every
    regressor compared (one entry unless ``requested`` is ``auto``). ``importance``: domain ->
    share, summing to 1. ``noise``: ``{"replicate_groups", "std"}``. ``oof``: ``(run_id, actual,
    predicted)`` per run, in input order. ``residual_quantiles``: ``(q_lo, q_hi)``, the interval
    offsets. ``observed_lower``/``observed_upper``: each domain's smallest and largest weight
    among the runs fitted on (the search's trust region).
    """

    model: str
    requested: str
    estimator: Any
    names: tuple[str, ...]
    cv: dict[str, Any]
    candidates: list[dict[str, Any]]
    importance: dict[str, float]
    noise: dict[str, Any]
    oof: list[tuple[str, float, float]]
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
        noise_std = self.noise.get("std")
        return max(float(noise_std or 0.0), (q_hi - q_lo) / (2 * _Z))

    def report(self) -> dict[str, Any]:
        """The contract's FitReport fields that the fit determines (not ``id``/``fitted_at``)."""
        return {
            "model": self.model,
            "requested": self.requested,
            "n_runs": self.n_runs,
            "cv": dict(self.cv),
            "candidates": [dict(c) for c in self.candidates],
            "importance": dict(self.importance),
            "noise": dict(self.noise),
            "oof": [
                {"run_id": run_id, "actual": actual, "predicted": predicted}
                for run_id, actual, predicted in self.oof
            ],
        }


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


def _noise(y: FloatArray, groups: NDArray[np.intp]) -> dict[str, Any]:
    """Pooled within-group standard deviation over the replicate groups (size >= 2)."""
    sizes = np.bincount(groups)
    replicated = np.flatnonzero(sizes >= 2)
    if len(replicated) == 0:
        return {"replicate_groups": 0, "std": None}
    means = np.bincount(groups, weights=y) / sizes
    in_group = np.isin(groups, replicated)
    ss = float(np.sum((y[in_group] - means[groups[in_group]]) ** 2))
    dof = int(np.sum(sizes[replicated] - 1))
    return {"replicate_groups": len(replicated), "std": math.sqrt(ss / dof)}


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
) -> FitResult:
    """Cross-validate ``model`` (or every registered regressor for ``auto``), refit on all runs.

    ``X``: (n, K) weights in ``names`` order; ``y``: the objective of each run; ``run_ids``: the
    runs' ids (for the out-of-fold report). The caller passes the usable runs only (completed,
    not excluded, finite objective). ``importance=False`` skips the permutation importance (the
    report's ``importance`` is then empty). Raises ``Conflict`` for fewer than 8 runs (or a single
    distinct mixture), ``InvalidInput`` at ``("body", "model")`` for an unknown model.
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

    known = regressor_names()
    if model != "auto" and model not in known:
        raise InvalidInput.at(
            ("body", "model"),
            f"unknown model {model!r}; known: {', '.join(['auto', *known])}",
        )
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
    candidates: list[dict[str, Any]] = []
    best: tuple[str, FloatArray, dict[str, float | None]] | None = None
    failure: Exception | None = None
    for name in tried:
        try:
            oof = _cross_validate(name, X, y, fold, folds, seed)
        except Exception as exc:
            if model != "auto":
                raise
            log.warning("regressor %r failed in cross-validation: %s", name, exc)
            candidates.append({"model": name, "spearman": None})
            failure = exc
            continue
        scores = _scores(y, oof)
        candidates.append({"model": name, "spearman": scores["spearman"]})
        rank = scores["spearman"] if scores["spearman"] is not None else -math.inf
        if best is None or rank > (best[2]["spearman"] or -math.inf):
            best = (name, oof, scores)
    if best is None:
        raise RuntimeError("every regressor failed in cross-validation") from failure
    chosen, oof, scores = best

    estimator = make_regressor(chosen, seed).fit(X, y)
    return FitResult(
        model=chosen,
        requested=model,
        estimator=estimator,
        names=names,
        cv={"folds": folds, **scores},
        candidates=candidates,
        importance=_importance(estimator, X, y, names, seed) if importance else {},
        noise=_noise(y, groups),
        oof=[
            (str(r), float(a), float(p))
            for r, a, p in zip(run_ids, y.tolist(), oof.tolist(), strict=True)
        ],
        residual_quantiles=_conformal_offsets(y - oof),
        n_runs=n,
        direction=direction,
        seed=seed,
        seconds=time.perf_counter() - started,
        observed_lower=tuple(float(x) for x in X.min(axis=0)),
        observed_upper=tuple(float(x) for x in X.max(axis=0)),
    )


def predict(result: FitResult, X: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``(value, low, high)`` for each row of ``X`` (weights in ``result.names`` order)."""
    X = np.atleast_2d(np.asarray(X, dtype=float))
    if X.shape[1] != len(result.names):
        raise ValueError(f"X must have {len(result.names)} columns, got {X.shape[1]}")
    value = np.asarray(result.estimator.predict(X), dtype=float).ravel()
    q_lo, q_hi = result.residual_quantiles
    return value, value + q_lo, value + q_hi


# --- search --------------------------------------------------------------------------------------


def _predicted(value: float, q: tuple[float, float]) -> dict[str, float]:
    return {"value": value, "low": value + q[0], "high": value + q[1]}


def _mixture(space: DomainSpace, w: FloatArray) -> dict[str, float]:
    return {name: float(x) for name, x in zip(space.names, w, strict=True)}


def _trust_space(space: DomainSpace, result: FitResult) -> DomainSpace | None:
    """The space's bounds narrowed to each domain's observed range; ``None`` if infeasible."""
    if len(result.observed_lower) != space.k or len(result.observed_upper) != space.k:
        return None
    lower = np.maximum(space.lower, np.asarray(result.observed_lower))
    upper = np.minimum(space.upper, np.asarray(result.observed_upper))
    if np.any(lower > upper) or lower.sum() > 1 - 1e-9 or upper.sum() < 1 + 1e-9:
        return None  # e.g. runs imported outside the bounds: search the bounds alone
    return dataclasses.replace(space, lower=lower, upper=upper)


def _kl_to_prior(w: FloatArray, prior: FloatArray) -> FloatArray:
    """KL(w || prior) per row, with 0 log 0 = 0 (a domain the prior lacks costs nothing only
    when ``w`` lacks it too)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(w > 0, w * np.log(w / np.maximum(prior, 1e-300)), 0.0)
    return np.asarray(terms.sum(axis=1), dtype=float)


def recommend(
    space: DomainSpace,
    result: FitResult,
    rng: np.random.Generator,
    *,
    direction: Direction | None = None,
    candidates: int = 100_000,
    top_k: int = 100,
    baseline: FloatArray | None = None,
    trust_region: bool = True,
    max_seconds: float | None = None,
    refine: bool = True,
    kl_penalty: float = 0.0,
) -> dict[str, Any]:
    """Search the mixture the model predicts best: score candidates, average the best ``top_k``.

    Returns the contract's Recommendation without ``fit_id``: ``weights``, ``params``,
    ``predicted``, ``baseline`` (the prior, or ``baseline``, moved into the bounds),
    ``p_better_than_baseline``, ``alternatives``, ``model``, ``n_runs`` and ``search``
    (``candidates``, ``top_k``, ``seconds``, ``trust_region``, ``refine_rounds``,
    ``kl_penalty``). ``direction`` defaults to the fit's.

    **Candidates.** RegMix scores a million Dirichlet samples and averages the best 100; with a
    1000-tree model that takes about 90 s here, almost all of it scoring. Most of those samples
    land far from the optimum. This search spends half of ``candidates`` on samples like
    RegMix's proxy swarm (centred on prior**0.5, scales 0.1..5, in chunks, moved into the
    bounds), and with ``refine`` the other half on three rounds around the best distinct
    candidates so far (16 centres, Dirichlet concentrations 100, 400, 1600: ever closer). On
    the RegMix swarm this finds a mixture predicted at least as good as the paper's procedure
    while scoring 20-40x fewer candidates (``bench/fit_search.py``). The ``top_k`` average is
    RegMix's guard against a tree model's jagged optimum.

    ``trust_region`` narrows the bounds to each domain's observed range in the fitted runs
    (when that leaves a feasible space): a regressor is not trusted where it never saw data.
    Without it, a linear model fitted on RegMix's runs recommends 100 % of a domain that no run
    gave more than 2.6 % (predicted loss 2.9 against a best observed 5.08); with it, 91 %
    Pile-CC, close to RegMix's own answer.

    ``kl_penalty`` (lambda >= 0) ranks candidates by ``prediction + lambda * KL(w || prior)``
    (sign-adjusted for ``maximize``), as Olmix's proposer does: it keeps the recommendation near
    the token prior unless the model sees a real gain.

    ``p_better_than_baseline = Phi(d / (sigma * sqrt(2)))`` with ``d`` the predicted improvement
    of the recommendation over the baseline (positive = better in ``direction``) and ``sigma``
    the predictive std of one run, ``max(noise std, (q_hi - q_lo) / (2 * 1.2816))``: the chance
    that one run on the recommendation beats one run on the baseline, treating both outcomes as
    independent normals around the predictions (conservative: model errors at two mixtures are
    in practice positively correlated and partly cancel). With ``sigma == 0`` it is 1, 0.5 or 0.

    Alternatives: up to 5 candidates predicted within ``sigma`` of the best candidate, each more
    than 0.05 (L1) from the recommendation and from each other, best first.

    ``max_seconds`` bounds the search: after the first chunk, the number of candidates is cut
    to what the model can score in that time (never below one chunk). A 1000-tree model scores
    about 12k mixtures a second here, a linear model millions; ``search.candidates`` reports the
    number actually scored.
    """
    if tuple(space.names) != result.names:
        raise ValueError(f"the space's domains {space.names} are not the fit's {result.names}")
    if candidates < 1 or top_k < 1:
        raise ValueError("candidates and top_k must be >= 1")
    if not (math.isfinite(kl_penalty) and kl_penalty >= 0):
        raise ValueError(f"kl_penalty must be a finite number >= 0, got {kl_penalty}")
    started = time.perf_counter()
    direction = direction or result.direction
    sign = 1.0 if direction == "minimize" else -1.0  # smaller sign * prediction is better
    top_k = min(top_k, candidates)
    narrowed = _trust_space(space, result) if trust_region else None
    search_space = narrowed or space
    prior = space.prior / space.prior.sum()

    def score(w: FloatArray) -> FloatArray:
        s = sign * np.asarray(result.estimator.predict(w), dtype=float).ravel()
        if kl_penalty > 0:
            s = s + kl_penalty * _kl_to_prior(w, prior)
        return np.where(np.isfinite(s), s, np.inf)

    search = global_then_refine(
        score,
        draw=lambda count: swarm_samples(search_space, count, rng),
        candidates=candidates,
        keep=max(top_k, _POOL),
        width=space.k,
        global_share=_GLOBAL_SHARE,
        rounds=[Round((c,)) for c in _REFINE_CONCENTRATIONS] if refine else (),
        around=lambda centres, c, count: neighbourhood(
            search_space, centres, c, count, rng, floor=0.0, min_alpha=_REFINE_MIN_ALPHA
        ),
        centres=_REFINE_CENTRES,
        min_l1=_REFINE_DISTINCT_L1,
        chunk=_CHUNK,
        max_seconds=max_seconds,
    )
    pool_w, pool_s = search.pool.rows, search.pool.scores
    # The global stage's best, for the alternatives: refining crowds the pool around the
    # best few centres, and alternatives are meant to be distinct mixtures.
    spread_w, spread_s = search.after_global.rows, search.after_global.scores

    q = result.residual_quantiles
    best = search_space.project(pool_w[:top_k].mean(axis=0))[0]
    base = space.project(space.prior if baseline is None else np.asarray(baseline, dtype=float))[0]
    values, _, _ = predict(result, np.vstack([best, base]))
    best_value, base_value = float(values[0]), float(values[1])

    sigma = result.interval_sigma
    gain = sign * (base_value - best_value)
    if sigma > 0:
        p_better = NormalDist().cdf(gain / (sigma * math.sqrt(2)))
    else:
        p_better = 1.0 if gain > 0 else 0.0 if gain < 0 else 0.5

    alternatives: list[dict[str, Any]] = []
    chosen = [best]
    if np.isfinite(pool_s[0]):
        near_w = np.vstack([pool_w, spread_w])
        near_s = np.concatenate([pool_s, spread_s])
        order = np.argsort(near_s, kind="stable")
        within = order[near_s[order] <= pool_s[0] + sigma]
        for w in near_w[within]:
            if min(float(np.abs(w - c).sum()) for c in chosen) <= DISTINCT_L1:
                continue
            chosen.append(w)
            if len(chosen) > MAX_ALTERNATIVES:
                break
        if len(chosen) > 1:
            # Predicted afresh: the pool's scores include the KL penalty.
            values_alt, _, _ = predict(result, np.vstack(chosen[1:]))
            alternatives = [
                {"weights": _mixture(space, w), "params": {}, "predicted": _predicted(float(v), q)}
                for w, v in zip(chosen[1:], values_alt, strict=True)
            ]

    return {
        "weights": _mixture(space, best),
        "params": {},
        "predicted": _predicted(best_value, q),
        "baseline": {
            "weights": _mixture(space, base),
            "params": {},
            "predicted": _predicted(base_value, q),
        },
        "p_better_than_baseline": p_better,
        "alternatives": alternatives,
        "model": result.model,
        "n_runs": result.n_runs,
        "search": {
            "candidates": search.scored,
            "top_k": top_k,
            "seconds": round(time.perf_counter() - started, 4),
            "trust_region": narrowed is not None,
            "refine_rounds": search.rounds,
            "kl_penalty": kl_penalty,
        },
    }
