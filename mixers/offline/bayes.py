# ruff: noqa: N803 - X is the conventional name of a design matrix (scikit-learn)
"""``bayes``: batch Bayesian optimisation on the bounded simplex (as ADMIRE-BayesOpt, arXiv
2508.11551, single fidelity).

The first ``initial_runs`` runs are RegMix's design. After that, every call fits a regressor with
a predictive standard deviation (the ``gp`` regressor by default) on the finished runs, scores
many candidate mixtures by expected improvement (EI) and picks the batch greedily with local
penalisation (Gonzalez et al., AISTATS 2016): after each pick, the acquisition of the candidates
around it is multiplied by the probability that they lie outside the ball in which the pick
already settles the question, ``Phi((L |x - x_j| - (mu_j - best)) / sigma_j)`` with ``L`` an
estimate of the model's Lipschitz constant. One fit per batch, no fantasised refits.

Candidates: ``candidates / 2`` mixtures over the whole space (half RegMix's swarm, half uniform
on the simplex) and as many in Dirichlet neighbourhoods of the 8 runs with the best posterior
mean (concentrations 30 to 1000), then twice ``candidates`` more around those with the highest
EI. Everything stays within the bounds; the batch is chosen among the best ``64 x count``
(at least 1024) that differ from every run so far.

Why not Optuna's TPE: on the simulator of ``tests/mixers/simulator.py`` (a Data-Mixing-Law loss,
K = 5 to 17, 4 batches of 32), TPE over a stick-breaking parametrisation with the history
replayed into an in-memory study does little better than the one-shot design, while EI over the
GP closes most of the gap (see ``tests/mixers/test_sequential_methods.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, field_validator
from scipy.stats import norm

from mixers.base import (
    DomainSpace,
    FloatArray,
    Observation,
    Proposal,
)
from mixers.fitting import MIN_RUNS
from mixers.offline._sequential import (
    DISTINCT_L1,
    DirectedConfig,
    SequentialMixer,
    check_model_name,
    fill,
    fit_surrogate,
    fitted_or_designed,
    gives_std,
    predict_with_std,
)
from mixers.registry import register
from mixers.regressors import make_regressor
from mixers.sampling import distinct_rows, global_samples, neighbourhood
from mixers.search import Round, global_then_refine

__all__ = ["BayesConfig", "BayesMixer", "expected_improvement", "local_penalisation"]

_LOCAL = (30.0, 100.0, 300.0, 1000.0)


def expected_improvement(mean: FloatArray, std: FloatArray, best: float, xi: float) -> FloatArray:
    """EI of each candidate for minimisation: ``E[max(best - xi - Y, 0)]``, ``Y ~ N(mean, std)``."""
    std = np.maximum(std, 1e-12)
    gain = best - xi - mean
    z = gain / std
    ei = gain * norm.cdf(z) + std * norm.pdf(z)
    return np.asarray(np.maximum(ei, 0.0), dtype=float)


def lipschitz(estimator: Any, sign: float, points: FloatArray, h: float = 1e-3) -> float:
    """The largest gradient norm of ``sign * mean`` at ``points`` within the simplex (finite
    differences along ``e_i - 1/K``); a floor keeps it positive."""
    k = points.shape[1]
    directions = np.eye(k) - 1.0 / k
    base = sign * np.asarray(estimator.predict(points), dtype=float).ravel()
    shifted = (points[:, None, :] + h * directions[None, :, :]).reshape(-1, k)
    moved = sign * np.asarray(estimator.predict(shifted), dtype=float).reshape(len(points), k)
    grad = (moved - base[:, None]) / h
    # Differences along e_i - 1/K: the gradient's component in the simplex's tangent space.
    norms = np.linalg.norm(grad - grad.mean(axis=1, keepdims=True), axis=1) * math.sqrt(
        k / max(k - 1, 1)
    )
    value = float(np.max(norms[np.isfinite(norms)], initial=0.0))
    return max(value, 1e-9)


def local_penalisation(
    candidates: FloatArray,
    acquisition: FloatArray,
    mean: FloatArray,
    std: FloatArray,
    best: float,
    lipschitz_constant: float,
    count: int,
) -> list[int]:
    """Greedy batch: the best penalised acquisition, ``count`` times (indices into candidates)."""
    value = np.log(np.maximum(acquisition, 1e-300))
    chosen: list[int] = []
    for _ in range(min(count, len(candidates))):
        j = int(np.argmax(value))
        if not np.isfinite(value[j]):
            break
        chosen.append(j)
        distance = np.linalg.norm(candidates - candidates[j], axis=1)
        z = (lipschitz_constant * distance - (mean[j] - best)) / max(std[j], 1e-12)
        value = value + norm.logcdf(z)
        value[j] = -np.inf
    return chosen


def check_std_model(value: str) -> str:
    """A registered regressor whose ``predict`` takes ``return_std`` (``auto`` cannot promise)."""
    if value == "auto":
        raise ValueError("bayes needs a model with a predictive std, e.g. 'gp' (not 'auto')")
    check_model_name(value)
    if not gives_std(make_regressor(value, 0)):
        raise ValueError(f"model {value!r} gives no predictive std (predict(X, return_std=True))")
    return value


class BayesConfig(DirectedConfig):
    initial_runs: int = Field(
        default=32,
        ge=1,
        le=100_000,
        description=(
            "runs from RegMix's design before the optimisation starts (the design is also the "
            f"fallback while fewer than {MIN_RUNS} runs have finished)"
        ),
    )
    model: str = Field(
        default="gp",
        description="surrogate: a regressor of POST /fit with a predictive std ('gp')",
    )
    xi: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description=(
            "EI's exploration margin, in predictive standard deviations of a run at the best "
            "mixture: improvements smaller than xi x std count for nothing"
        ),
    )
    candidates: int = Field(
        default=4096,
        ge=64,
        le=1_000_000,
        description="candidate mixtures scored per refinement step (3 steps per call)",
    )

    @field_validator("model")
    @classmethod
    def _std_model(cls, value: str) -> str:
        return check_std_model(value)


@register
class BayesMixer(SequentialMixer[BayesConfig]):
    name: ClassVar[str] = "bayes"
    description: ClassVar[str] = (
        "Batch Bayesian optimisation: RegMix's design first, then a Gaussian process on the "
        "runs so far and batches of mixtures chosen by expected improvement with local "
        "penalisation (ADMIRE-BayesOpt-style, single fidelity)."
    )

    def best_run_competes(self, runs: int) -> bool:
        """Once the runs go past the first design: then the best run is a find."""
        return runs > self.config.initial_runs

    def propose(
        self,
        space: DomainSpace,
        history: Sequence[Observation],
        count: int,
        rng: np.random.Generator,
    ) -> list[Proposal]:
        cfg = self.config
        return fitted_or_designed(
            self.name,
            space,
            history,
            count,
            rng,
            ready=len(history) >= cfg.initial_runs,
            optimise=lambda X, y, existing, rest: self._optimise(space, X, y, existing, rest, rng),
            explore=cfg.explore,
        )

    def _optimise(
        self,
        space: DomainSpace,
        X: FloatArray,
        y: FloatArray,
        existing: FloatArray,
        count: int,
        rng: np.random.Generator,
    ) -> FloatArray:
        cfg = self.config
        sign = 1.0 if cfg.direction == "minimize" else -1.0
        estimator, _ = fit_surrogate(X, y, cfg.model, space.names, int(rng.integers(2**31 - 1)))

        def posterior(W: FloatArray) -> tuple[FloatArray, FloatArray]:
            out = predict_with_std(estimator, W)
            if out is None:
                raise ValueError(f"model {cfg.model!r} gives no predictive std")
            mean, std = out
            return sign * mean, std

        observed_mean, observed_std = posterior(X)
        at_best = int(np.argmin(observed_mean))
        best = float(observed_mean[at_best])
        xi = cfg.xi * float(observed_std[at_best])

        def acquire(W: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
            mean, std = posterior(W)
            ei = expected_improvement(mean, std, best, xi)
            return np.where(np.isfinite(ei), ei, 0.0), mean, std

        n = cfg.candidates
        top_runs = X[np.argsort(observed_mean, kind="stable")[:8]]
        near_runs = np.vstack(
            [neighbourhood(space, top_runs, c, n // (2 * len(_LOCAL)), rng) for c in _LOCAL]
        )
        search = global_then_refine(
            lambda W: -acquire(W)[0],
            draw=lambda count: global_samples(space, count, rng),
            candidates=n // 2 + 2 * n,
            keep=max(64 * count, 1024),
            width=space.k,
            global_share=(n // 2) / (n // 2 + 2 * n),
            rounds=[Round(_LOCAL)] * 2,  # refine around the candidates with the highest EI
            around=lambda centres, c, size: neighbourhood(space, centres, c, size, rng),
            centres=max(16, 2 * count),
            seeds=near_runs,
            chunk=n,
        )
        pool = distinct_rows(search.pool.rows, existing, DISTINCT_L1)
        ei, mean, std = acquire(pool)
        lip = lipschitz(estimator, sign, pool[: min(len(pool), 128)])
        # The penalised balls' radii (mu_j - M) / L use the best value predicted anywhere, so
        # that no radius is negative (a candidate predicted better than every run).
        floor = min(best, float(mean.min(initial=best)))
        picked = local_penalisation(pool, ei, mean, std, floor, lip, count)
        return fill(space, pool[picked], existing, count, rng)
