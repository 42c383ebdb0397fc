# ruff: noqa: N803, N806 - X is the conventional name of a design matrix (scikit-learn)
"""``rounds``: CLIMB's iterative bootstrapping (Diao et al., NVIDIA, arXiv 2504.13161).

The first round is RegMix's design (``dirichlet_design``). Every later round fits a regressor on
the finished runs so far, finds the mixture it predicts best, and samples the round's runs in a
neighbourhood of that mixture which shrinks from round to round: Dirichlet samples centred on
the predicted optimum, their concentration multiplied by ``growth`` each round, of which the
ones the model predicts best form a pool that the runs are drawn from at random (CLIMB's "top
pool, drawn from for diversity"). The predicted optimum itself is always one of them. Which
round a call belongs to follows from the number of runs in the experiment.

Differences from CLIMB, which samples 100k ``Dirichlet(prior)`` mixtures each round and keeps
the top ``max(n^2, 128)``:

* The neighbourhood is explicit, so later rounds concentrate around the optimum even when the
  prior is far from it.
* The optimum is searched over the whole space (random search, then local refinement), and for
  a model with a predictive std (``gp``) it minimises ``mean + caution * std``: a pessimistic
  bound. With the plain mean, a GP fitted on a design far from the optimum predicted
  unexplored corners best and sent whole rounds there (simulator gap closure 0.82 against 0.94
  with ``caution = 1``).
* The default model is the GP (smooth, good with few runs), not LightGBM.

The helpers below (history, fitting, the optimum search, neighbourhood sampling) are shared
with ``bayes``.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from mixers.base import DomainSpace, FloatArray, MethodConfig, Observation, OfflineMixer, Proposal
from mixers.fitting import MIN_RUNS, fit_model
from mixers.offline.regmix import RegMixConfig, dirichlet_design, distinct_rows
from mixers.registry import register
from mixers.regressors import make_regressor, regressor_names
from mixopt.errors import Conflict

__all__ = [
    "FIT_ERRORS",
    "RoundsConfig",
    "RoundsMixer",
    "check_model_name",
    "fit_surrogate",
    "gives_std",
    "neighbourhood",
    "search_optimum",
    "usable_runs",
]

log = logging.getLogger(__name__)

Direction = Literal["minimize", "maximize"]
Scorer = Callable[[FloatArray], FloatArray]
"""Mixtures (rows) -> a score per row, smaller is better (the objective times +-1)."""

DIRECTION_DESCRIPTION = (
    "whether a smaller ('minimize', a loss) or larger ('maximize', a score) objective is better; "
    "must match the experiment's objective direction"
)
_DISTINCT = 1e-5  # proposals differ from each other and the history by more than this (L1)
_STRENGTHS = np.logspace(np.log10(0.1), np.log10(5.0), 15)  # RegMix's ladder
_LOCAL = (30.0, 100.0, 300.0, 1000.0)  # concentrations of the optimum search's refinement
FIT_ERRORS = (ArithmeticError, ValueError, RuntimeError, np.linalg.LinAlgError, Conflict)
"""A fit that fails with one of these (degenerate data, no model converging) falls back to the
design: a proposal request should not fail because a surrogate could not be fitted."""


def check_model_name(value: str) -> str:
    """``auto`` or a registered regressor (the API's ``model`` names)."""
    known = regressor_names()
    if value != "auto" and value not in known:
        raise ValueError(f"unknown model {value!r}; known: {', '.join(['auto', *known])}")
    return value


# --- history ------------------------------------------------------------------------------------


def history_weights(history: Sequence[Observation], k: int) -> FloatArray:
    """Every run's mixture (finished or not): new proposals must differ from all of them."""
    return np.array([np.asarray(obs.weights, dtype=float) for obs in history]).reshape(-1, k)


def usable_runs(history: Sequence[Observation], k: int) -> tuple[FloatArray, FloatArray]:
    """``(X, y)`` of the completed, non-excluded runs with a finite objective."""
    rows = [
        (np.asarray(obs.weights, dtype=float), float(obs.objective))
        for obs in history
        if obs.status == "completed"
        and not obs.excluded
        and obs.objective is not None
        and math.isfinite(obs.objective)
        and np.all(np.isfinite(obs.weights))
    ]
    X = np.array([w for w, _ in rows]).reshape(-1, k)
    y = np.array([v for _, v in rows], dtype=float)
    return X, y


def can_fit(X: FloatArray) -> bool:
    """Enough runs (``MIN_RUNS``) on at least two distinct mixtures."""
    return len(X) >= MIN_RUNS and len(np.unique(np.round(X, 9), axis=0)) >= 2


def fit_surrogate(
    X: FloatArray, y: FloatArray, model: str, names: Sequence[str], seed: int
) -> tuple[Any, str]:
    """A fitted regressor and its name: ``model`` refitted on all runs, or for ``auto`` the one
    ``fit_model`` picks by cross-validated Spearman."""
    if model == "auto":
        result = fit_model(
            X, y, [str(i) for i in range(len(y))], model="auto", names=names, seed=seed
        )
        return result.estimator, result.model
    return make_regressor(model, seed).fit(X, y), model


def predict_with_std(estimator: Any, W: FloatArray) -> tuple[FloatArray, FloatArray] | None:
    """``(mean, std)`` from ``estimator.predict(W, return_std=True)``; ``None`` without it."""
    if not gives_std(estimator):
        return None
    mean, std = estimator.predict(W, return_std=True)
    return np.asarray(mean, dtype=float).ravel(), np.asarray(std, dtype=float).ravel()


def gives_std(estimator: Any) -> bool:
    """Whether ``estimator.predict`` takes ``return_std`` (a predictive standard deviation)."""
    return "return_std" in inspect.signature(estimator.predict).parameters


def predictor(estimator: Any, sign: float, caution: float = 0.0) -> Scorer:
    """``sign * prediction + caution * std`` (the std where the model gives one), smaller is
    better; non-finite scores are worst."""
    has_std = caution > 0 and gives_std(estimator)

    def score(W: FloatArray) -> FloatArray:
        if has_std:
            out = predict_with_std(estimator, W)
            assert out is not None
            s = sign * out[0] + caution * out[1]
        else:
            s = sign * np.asarray(estimator.predict(W), dtype=float).ravel()
        return np.where(np.isfinite(s), s, np.inf)

    return score


# --- sampling -----------------------------------------------------------------------------------


def _inside(space: DomainSpace, W: FloatArray) -> FloatArray:
    """Rows moved into the bounds (rows already inside stay as they are), invalid ones dropped."""
    W = np.asarray(W, dtype=float)
    if len(W) == 0:
        return W.reshape(0, space.k)
    outside = ~space.contains(W, tol=1e-12)
    if outside.any():
        W = W.copy()
        W[outside] = space.project(W[outside])
    keep = np.all(np.isfinite(W), axis=1) & space.contains(W)
    return np.asarray(W[keep], dtype=float)


def _dirichlet(alpha: FloatArray, rng: np.random.Generator) -> FloatArray:
    """Row-wise Dirichlet draws via gammas; a row whose gammas all underflow gets its mean."""
    gammas = rng.standard_gamma(alpha)
    totals = gammas.sum(axis=1, keepdims=True)
    empty = totals[:, 0] <= 0
    gammas[empty] = alpha[empty]
    totals[empty] = alpha[empty].sum(axis=1, keepdims=True)
    return np.asarray(gammas / totals, dtype=float)


def global_samples(space: DomainSpace, count: int, rng: np.random.Generator) -> FloatArray:
    """Mixtures spread over the whole space: half like RegMix's swarm (Dirichlet around
    ``prior**0.5`` with concentrations 0.1..5), half flat Dirichlet(1) (uniform on the simplex)."""
    centre = space.prior**0.5
    centre = centre / centre.sum()
    half = count // 2
    scales = rng.choice(_STRENGTHS, size=half)
    swarm = _dirichlet(np.maximum(centre[None, :] * scales[:, None], 1e-3), rng)
    flat = _dirichlet(np.ones((count - half, space.k)), rng)
    return _inside(space, np.vstack([swarm, flat]))


def neighbourhood(
    space: DomainSpace,
    centres: FloatArray,
    concentration: float | FloatArray,
    count: int,
    rng: np.random.Generator,
    floor: float = 0.02,
) -> FloatArray:
    """``count`` Dirichlet samples around the ``centres`` (rows, used in turn), in the bounds.

    Each draw is ``Dirichlet(c * ((1 - floor) * centre + floor / K))``: mean near the centre,
    spread shrinking as the concentration ``c`` grows (about ``sqrt(w (1 - w) / c)`` per
    weight). The ``floor`` keeps domains at zero in the centre reachable.
    """
    centres = np.atleast_2d(centres)
    k = space.k
    which = np.arange(count) % len(centres)
    c = np.broadcast_to(np.asarray(concentration, dtype=float), (count,))
    base = (1.0 - floor) * centres[which] + floor / k
    alpha = np.maximum(c[:, None] * base, 1e-3)
    return _inside(space, _dirichlet(alpha, rng))


def search_optimum(
    space: DomainSpace,
    score: Scorer,
    rng: np.random.Generator,
    *,
    seeds: FloatArray | None = None,
    samples: int = 4096,
    iterations: int = 3,
    top: int = 16,
) -> FloatArray:
    """The mixture with the best ``score``: random search, then local refinement.

    ``samples`` mixtures over the whole space (``global_samples``) plus the ``seeds`` (e.g. the
    runs so far); then ``iterations`` times, Dirichlet samples around the ``top`` best so far
    at concentrations 30 to 1000. Works for any model (trees included: no gradients).
    """
    pool = global_samples(space, samples, rng)
    if seeds is not None and len(seeds):
        pool = np.vstack([pool, _inside(space, seeds)])
    values = score(pool)
    for _ in range(iterations):
        order = np.argsort(values, kind="stable")[:top]
        per = max(samples // (2 * len(_LOCAL)), len(order))
        local = np.vstack([neighbourhood(space, pool[order], c, per, rng) for c in _LOCAL])
        pool = np.vstack([pool[order], local])
        values = np.concatenate([values[order], score(local)])
    return np.asarray(pool[int(np.argmin(values))], dtype=float)


def fill(
    space: DomainSpace,
    chosen: FloatArray,
    existing: FloatArray,
    count: int,
    rng: np.random.Generator,
) -> FloatArray:
    """Top ``chosen`` up to ``count`` rows with RegMix's design (narrow spaces, small pools)."""
    if len(chosen) >= count:
        return chosen[:count]
    more = dirichlet_design(space, count - len(chosen), rng, existing=np.vstack([existing, chosen]))
    return np.vstack([chosen, more])


# --- the method ---------------------------------------------------------------------------------


class RoundsConfig(MethodConfig):
    rounds: list[int] = Field(
        default=[64, 32, 32],
        min_length=1,
        max_length=100,
        description=(
            "runs per round (CLIMB: 64, 32, 16); the first round is RegMix's design, each later "
            "one samples around the optimum predicted from the runs so far. The round of a "
            "proposal is given by the number of runs in the experiment; past the last round, "
            "the last neighbourhood is kept"
        ),
    )
    model: str = Field(
        default="gp",
        description=(
            "regressor fitted before each round: a model name of POST /fit (e.g. 'gp', "
            "'mixing_law', 'lightgbm') or 'auto' (cross-validated choice, slower)"
        ),
    )
    direction: Direction = Field(default="minimize", description=DIRECTION_DESCRIPTION)
    concentration: float = Field(
        default=30.0,
        gt=0,
        le=1e6,
        description=(
            "Dirichlet concentration of the second round's neighbourhood around the predicted "
            "optimum (a weight w varies by about sqrt(w (1 - w) / concentration))"
        ),
    )
    growth: float = Field(
        default=3.0,
        ge=1,
        le=100,
        description="factor on the concentration per later round (the neighbourhood shrinks)",
    )
    caution: float = Field(
        default=1.0,
        ge=0,
        le=100,
        description=(
            "the predicted optimum minimises (for 'minimize') mean + caution x predictive std "
            "where the model gives a std (gp): a pessimistic bound that keeps it near the data"
        ),
    )
    top_fraction: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description=(
            "share of the neighbourhood's samples, best predicted first, that the round's runs "
            "are drawn from at random (CLIMB's top pool)"
        ),
    )

    @field_validator("rounds")
    @classmethod
    def _positive_rounds(cls, value: list[int]) -> list[int]:
        if any(n < 1 for n in value):
            raise ValueError("every round needs at least one run")
        return value

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return check_model_name(value)


Optimiser = Callable[[FloatArray, FloatArray, FloatArray], FloatArray]
"""``(X, y, existing) -> rows``: a fitted method's proposals from the usable runs ``(X, y)``
and every run's mixture so far (``existing``)."""


def fitted_or_designed(
    method: str,
    space: DomainSpace,
    history: Sequence[Observation],
    count: int,
    rng: np.random.Generator,
    *,
    ready: bool,
    optimise: Optimiser,
) -> list[Proposal]:
    """What a method that fits its history proposes: ``optimise``'s rows once it is ``ready``
    and the runs can be fitted; RegMix's design before that, or when the fit fails (logged)."""
    existing = history_weights(history, space.k)
    X, y = usable_runs(history, space.k)
    rows: FloatArray | None = None
    if ready and can_fit(X):
        try:
            rows = optimise(X, y, existing)
        except FIT_ERRORS as exc:
            log.warning("%s: fitting failed, falling back to the design: %s", method, exc)
    if rows is None:
        rows = dirichlet_design(space, count, rng, RegMixConfig(), existing)
    return [Proposal(np.asarray(row, dtype=float)) for row in rows]


def current_round(rounds: Sequence[int], runs: int) -> int:
    """0 for the first round; ``len(rounds) - 1`` once every planned round is used up."""
    ends = np.cumsum(rounds)
    return min(int(np.searchsorted(ends, runs, side="right")), len(rounds) - 1)


@register
class RoundsMixer(OfflineMixer):
    name: ClassVar[str] = "rounds"
    description: ClassVar[str] = (
        "CLIMB-style rounds: RegMix's design first, then each round fits a regressor to the "
        "runs so far and samples the next runs around its predicted optimum, in a neighbourhood "
        "that shrinks round by round."
    )
    Config: ClassVar[type[MethodConfig]] = RoundsConfig

    def propose(
        self,
        space: DomainSpace,
        history: Sequence[Observation],
        count: int,
        rng: np.random.Generator,
    ) -> list[Proposal]:
        cfg = self.config
        assert isinstance(cfg, RoundsConfig)
        r = current_round(cfg.rounds, len(history))
        return fitted_or_designed(
            self.name,
            space,
            history,
            count,
            rng,
            ready=r > 0,
            optimise=lambda X, y, existing: self._around_optimum(
                space, X, y, existing, count, r, rng
            ),
        )

    def _around_optimum(
        self,
        space: DomainSpace,
        X: FloatArray,
        y: FloatArray,
        existing: FloatArray,
        count: int,
        r: int,
        rng: np.random.Generator,
    ) -> FloatArray:
        cfg = self.config
        assert isinstance(cfg, RoundsConfig)
        sign = 1.0 if cfg.direction == "minimize" else -1.0
        estimator, _ = fit_surrogate(X, y, cfg.model, space.names, int(rng.integers(2**31 - 1)))
        centre = search_optimum(space, predictor(estimator, sign, cfg.caution), rng, seeds=X)
        score = predictor(estimator, sign)
        concentration = cfg.concentration * cfg.growth ** (r - 1)
        n = max(16 * count, 256)
        candidates = neighbourhood(space, centre, concentration, n, rng)
        candidates = distinct_rows(candidates, np.vstack([existing, centre[None, :]]), _DISTINCT)
        values = score(candidates) if len(candidates) else np.empty(0)
        pool_size = max(count, math.ceil(cfg.top_fraction * len(candidates)))
        pool = candidates[np.argsort(values, kind="stable")[:pool_size]]
        pool = pool[rng.permutation(len(pool))]
        chosen = distinct_rows(centre[None, :], existing, _DISTINCT)[: min(count, 1)]
        chosen = np.vstack([chosen, pool[: count - len(chosen)]])
        return fill(space, chosen, existing, count, rng)
