"""The recommended mixture of a fit: a search over the model's predictions, with intervals.

Mixers return these frozen dataclasses (weights are arrays in the space's domain order); the
service maps them to the contract's Recommendation.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal

import numpy as np

from mixers.base import Direction, DomainSpace, FloatArray
from mixers.fitting import Fit, Usable, predict, predict_with_std
from mixers.sampling import neighbourhood, swarm_samples
from mixers.search import CHUNK, Round, global_then_refine

__all__ = [
    "BEST_RUN_CAUTION",
    "DISTINCT_L1",
    "MAX_ALTERNATIVES",
    "SEARCH_SECONDS",
    "BestRun",
    "Prediction",
    "Recommendation",
    "Scored",
    "SearchReport",
    "recommend",
    "search_candidates",
    "seconds_per_candidate",
]

SEARCH_SECONDS = 3.0
"""The time a fit's search is sized for (``POST /fit`` answers in seconds, not minutes); it is
turned into a number of candidates by ``search_candidates``, never checked on the clock."""
DISTINCT_L1 = 0.05
"""Alternatives differ from each other and from the recommendation by more than this (L1)."""
MAX_ALTERNATIVES = 5
BEST_RUN_CAUTION = 2.0
"""How many of its extra predictive standard deviations (over the best run's) count against the
searched mixture when it competes with the best observed run (``_compete``)."""

_POOL = 2048  # best candidates kept for the alternatives
_GLOBAL_SHARE = 0.5  # of the candidates, drawn swarm-like before refining around the best
_REFINE_CONCENTRATIONS = (100.0, 400.0, 1600.0)
_REFINE_CENTRES = 16
_REFINE_DISTINCT_L1 = 0.02
_REFINE_MIN_ALPHA = 0.01

# Seconds per candidate, measured on this service's 2-core host under the load of a shared CI
# run (load ~2.3): drawing and projecting a candidate costs about 4 us + 0.4 us per domain
# (5.6 us at K=5, 8.6 at 17, 30 at 64); scoring it costs a 1000-tree LightGBM about 70 us
# (14k/s at K=17 and K=64 alike), a GP about (34 + 0.57 K) ns per fitted run (45k/s at 512 runs
# and K=17, 28k/s at K=64), and the linear and parametric laws well under 1 us (1-25M/s).
_DRAW_SECONDS = (4e-6, 4e-7)  # constant, per domain
_SCORE_SECONDS: dict[str, tuple[float, float, float, float]] = {
    # model -> (constant, per domain, per fitted run, per domain and fitted run)
    "linear": (0.0, 2e-8, 0.0, 0.0),
    "loglinear": (0.0, 2e-8, 0.0, 0.0),
    "mixing_law": (0.0, 2e-8, 0.0, 0.0),
    "lightgbm": (7e-5, 0.0, 0.0, 0.0),
    "gp": (0.0, 0.0, 3.4e-8, 5.7e-10),
}
_UNKNOWN_SCORE_SECONDS = (1e-4, 0.0, 0.0, 0.0)  # a regressor registered elsewhere: like trees


@dataclass(frozen=True)
class Prediction:
    """A model's value for one mixture and its calibrated 80 % interval (for one run's outcome)."""

    value: float
    low: float
    high: float

    @classmethod
    def of(cls, fit: Fit, value: float) -> Prediction:
        q_lo, q_hi = fit.residual_quantiles
        return cls(value, value + q_lo, value + q_hi)


@dataclass(frozen=True)
class Scored:
    """A mixture (weights in space order, and its parameters) with the model's prediction."""

    weights: FloatArray
    params: Mapping[str, Any]
    predicted: Prediction


@dataclass(frozen=True)
class BestRun:
    """The best observed run among those fitted, as it competed with the searched mixture:
    its reported ``observed`` objective and the model's ``predicted`` value for its mixture."""

    run_id: str
    weights: FloatArray
    observed: float
    predicted: Prediction


@dataclass(frozen=True)
class SearchReport:
    """How the recommendation was searched; ``None`` fields do not apply to the method."""

    candidates: int
    top_k: int
    seconds: float
    trust_region: bool
    refine_rounds: int | None = None
    kl_penalty: float | None = None


@dataclass(frozen=True)
class Recommendation:
    """The mixture to train the big run on, as a fit predicts it.

    ``baseline``: the prior mixture and its prediction (``None`` where a method has no neutral
    baseline). ``p_better_than_baseline``: the chance that one run on ``weights`` beats one on
    the baseline. ``alternatives``: distinct mixtures predicted within the noise of the best.
    ``chosen``: whether ``weights`` is the searched mixture or the ``best_run``'s, which
    competed with it (``search`` where no run could); ``reason`` says why it won.
    ``searched``: the searched mixture and its prediction when the best run won (it is also the
    first alternative unless within ``DISTINCT_L1`` of the run's); ``None`` when it is ``weights``.
    """

    weights: FloatArray
    params: Mapping[str, Any]
    predicted: Prediction
    baseline: Scored | None
    p_better_than_baseline: float | None
    alternatives: tuple[Scored, ...]
    model: str
    n_runs: int
    search: SearchReport
    chosen: Literal["search", "best_run"] = "search"
    best_run: BestRun | None = None
    reason: str | None = None
    searched: Scored | None = None


def _trust_space(space: DomainSpace, result: Fit) -> DomainSpace | None:
    """The space's bounds narrowed to each domain's observed range; ``None`` if infeasible."""
    if len(result.observed_lower) != space.k or len(result.observed_upper) != space.k:
        return None
    lower = np.maximum(space.lower, np.asarray(result.observed_lower))
    upper = np.minimum(space.upper, np.asarray(result.observed_upper))
    if np.any(lower > upper) or lower.sum() > 1 - 1e-9 or upper.sum() < 1 + 1e-9:
        return None  # e.g. runs imported outside the bounds: search the bounds alone
    return dataclasses.replace(space, lower=lower, upper=upper)


def seconds_per_candidate(result: Fit) -> float:
    """The time one candidate of ``result``'s search takes here (drawn and scored), from the
    measured figures above: by the fit's model, its number of features and of runs. A
    per-metric fit scores each metric's regressor."""
    k, n = len(result.names), result.n_runs
    members = [m.model for m in result.metric_models] or [result.model]
    seconds = _DRAW_SECONDS[0] + _DRAW_SECONDS[1] * k
    for model in members:
        constant, per_domain, per_run, per_cell = _SCORE_SECONDS.get(model, _UNKNOWN_SCORE_SECONDS)
        seconds += constant + per_domain * k + (per_run + per_cell * k) * n
    return seconds


def search_candidates(result: Fit, seconds: float, *, most: int = 100_000) -> int:
    """How many candidates ``result``'s search scores in ``seconds`` here: at most ``most``,
    at least one chunk (``mixers.search.CHUNK``).

    A count from the model and the data's shape, not from the clock: the same runs, config and
    seed give the same recommendation however busy the machine is. At ``SEARCH_SECONDS``: the
    100k cap for the linear and parametric laws at K=17 (97k at K=64) and for a GP on 128 runs
    at K=17; a GP on 512 runs 90k at K=17, 46k at K=64; a 1000-tree LightGBM 37k at K=17, 30k
    at K=64.
    """
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"seconds must be a finite number >= 0, got {seconds}")
    return max(CHUNK, min(most, int(seconds / seconds_per_candidate(result))))


def _kl_to_prior(w: FloatArray, prior: FloatArray) -> FloatArray:
    """KL(w || prior) per row, with 0 log 0 = 0 (a domain the prior lacks costs nothing only
    when ``w`` lacks it too)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(w > 0, w * np.log(w / np.maximum(prior, 1e-300)), 0.0)
    return np.asarray(terms.sum(axis=1), dtype=float)


def _compete(
    space: DomainSpace,
    result: Fit,
    runs: Usable,
    searched: FloatArray,
    searched_value: float,
    sign: float,
) -> tuple[BestRun | None, bool, str]:
    """The best observed run against the searched mixture: ``(best_run, won, why)``;
    ``best_run`` is ``None`` when no run could compete (``why`` says why).

    The model predicts both mixtures. The searched one wins when the model predicts it better
    than the best run by more than ``BEST_RUN_CAUTION`` times the extra predictive standard
    deviation it has over the run (for a model that gives one, the GP; else by any margin): the
    run's mixture has been trained and seen, the searched one is the model's extrapolation, and
    a search maximising a prediction favours the mixtures the model overrates. The run's own
    reported value is not compared with the prediction: the best of many noisy runs is lucky
    by selection, so its report is optimistic.
    """
    finite = np.isfinite(runs.y)
    if not finite.any():
        return None, False, "no fitted run has a finite objective"
    i = int(np.argmin(np.where(finite, sign * runs.y, np.inf)))
    run_id, weights = runs.run_ids[i], np.asarray(runs.X[i], dtype=float)
    if len(weights) != space.k or not bool(space.contains(weights[None, :])[0]):
        return None, False, f"the best run {run_id} lies outside the domains' bounds"
    value = float(predict(result, weights[None, :])[0][0])
    best_run = BestRun(run_id, weights, float(runs.y[i]), Prediction.of(result, value))
    with_std = predict_with_std(result.estimator, np.vstack([searched, weights]))
    extra = 0.0 if with_std is None else max(0.0, float(with_std[1][0] - with_std[1][1]))
    gain = sign * (value - searched_value)  # > 0: the searched mixture is predicted better
    needed = BEST_RUN_CAUTION * extra
    why = f"the model predicts the searched mixture {gain:.4g} better than run {run_id}"
    if extra > 0:
        why += (
            f"; it needed more than {needed:.4g} ({BEST_RUN_CAUTION:g} x its {extra:.4g} more "
            "predictive std)"
        )
    return best_run, gain <= needed, why


def recommend(
    space: DomainSpace,
    result: Fit,
    rng: np.random.Generator,
    *,
    runs: Usable | None = None,
    contest: bool = True,
    direction: Direction | None = None,
    candidates: int = 100_000,
    top_k: int = 100,
    baseline: FloatArray | None = None,
    trust_region: bool = True,
    max_seconds: float | None = None,
    refine: bool = True,
    kl_penalty: float = 0.0,
) -> Recommendation:
    """Search the mixture the model predicts best: score candidates, average the best ``top_k``.

    The ``baseline`` is the prior (or ``baseline``), moved into the bounds. ``direction``
    defaults to the fit's.

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

    ``runs``: the fitted runs; the best of them competes with the searched mixture
    (``_compete``), and when it wins it is the recommendation, with the searched mixture in
    ``searched`` and first among the alternatives (when more than ``DISTINCT_L1`` from it).
    ``chosen``, ``best_run`` and ``reason`` report the contest. With ``contest`` false the best
    run is reported but cannot win (a method whose runs are a space-filling design: its best run
    is one lucky draw, not a found optimum).

    ``max_seconds`` sizes the search to a time budget: ``candidates`` is cut to
    ``search_candidates(result, max_seconds)``, the count the fit's model gets through in that
    time on this host by the measured rates (never below one chunk). It is a count, not a clock,
    so a busy machine scores as many candidates as a quiet one and recommends the same mixture;
    ``search.candidates`` reports the number scored, ``search.seconds`` the time it took.
    """
    if tuple(space.names) != result.names:
        raise ValueError(f"the space's domains {space.names} are not the fit's {result.names}")
    if candidates < 1 or top_k < 1:
        raise ValueError("candidates and top_k must be >= 1")
    if not (math.isfinite(kl_penalty) and kl_penalty >= 0):
        raise ValueError(f"kl_penalty must be a finite number >= 0, got {kl_penalty}")
    started = time.perf_counter()
    if max_seconds is not None:
        candidates = min(candidates, search_candidates(result, max_seconds))
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
    )
    pool_w, pool_s = search.pool.rows, search.pool.scores
    # The global stage's best, for the alternatives: refining crowds the pool around the
    # best few centres, and alternatives are meant to be distinct mixtures.
    spread_w, spread_s = search.after_global.rows, search.after_global.scores

    best = search_space.project(pool_w[:top_k].mean(axis=0))[0]
    base = space.project(space.prior if baseline is None else np.asarray(baseline, dtype=float))[0]
    values, _, _ = predict(result, np.vstack([best, base]))
    best_value, base_value = float(values[0]), float(values[1])

    chosen: Literal["search", "best_run"] = "search"
    best_run, reason, searched = None, None, None
    if runs is not None and len(runs.y):
        best_run, won, why = _compete(space, result, runs, best, best_value, sign)
        if best_run is None:
            reason = f"search: {why}"
        elif not contest:
            reason = (
                f"search: {why}, but the best run does not compete with this method's search "
                "(its runs are a design spread over the space, not searched around an optimum)"
            )
        elif won:
            chosen, reason = "best_run", f"best run: {why}"
            searched = Scored(best, {}, Prediction.of(result, best_value))
            best, best_value = best_run.weights, best_run.predicted.value
        else:
            reason = f"search: {why}"

    sigma = result.interval_sigma
    gain = sign * (base_value - best_value)
    if sigma > 0:
        p_better = NormalDist().cdf(gain / (sigma * math.sqrt(2)))
    else:
        p_better = 1.0 if gain > 0 else 0.0 if gain < 0 else 0.5

    alternatives: list[Scored] = []
    picked = [best]
    if searched is not None and np.abs(searched.weights - best).sum() > DISTINCT_L1:
        picked.append(searched.weights)
    if np.isfinite(pool_s[0]):
        near_w = np.vstack([pool_w, spread_w])
        near_s = np.concatenate([pool_s, spread_s])
        order = np.argsort(near_s, kind="stable")
        within = order[near_s[order] <= pool_s[0] + sigma]
        for w in near_w[within]:
            if len(picked) > MAX_ALTERNATIVES:
                break
            if min(float(np.abs(w - c).sum()) for c in picked) <= DISTINCT_L1:
                continue
            picked.append(w)
    if len(picked) > 1:
        # Predicted afresh: the pool's scores include the KL penalty.
        values_alt, _, _ = predict(result, np.vstack(picked[1:]))
        alternatives = [
            Scored(w, {}, Prediction.of(result, float(v)))
            for w, v in zip(picked[1:], values_alt, strict=True)
        ]

    return Recommendation(
        weights=best,
        params={},
        predicted=Prediction.of(result, best_value),
        baseline=Scored(base, {}, Prediction.of(result, base_value)),
        p_better_than_baseline=p_better,
        alternatives=tuple(alternatives),
        model=result.model,
        n_runs=result.n_runs,
        search=SearchReport(
            candidates=search.scored,
            top_k=top_k,
            seconds=round(time.perf_counter() - started, 4),
            trust_region=narrowed is not None,
            refine_rounds=search.rounds,
            kl_penalty=kl_penalty,
        ),
        chosen=chosen,
        best_run=best_run,
        reason=reason,
        searched=searched,
    )
