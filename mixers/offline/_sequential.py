# ruff: noqa: N803 - X is the conventional name of a design matrix (scikit-learn)
"""What the offline methods that learn from their history share (``rounds``, ``bayes``).

They propose RegMix's design until enough runs have finished, then fit a surrogate on the
finished runs and propose from it; a fit that fails falls back to the design, logged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from pydantic import Field

from mixers.base import (
    Direction,
    DomainSpace,
    ExperimentSetup,
    FloatArray,
    MethodConfig,
    Observation,
    Proposal,
)
from mixers.fitting import (
    MIN_RUNS,
    REPLICATE_DECIMALS,
    check_model,
    fit_model,
    gives_std,
    predict_with_std,
    usable_runs,
)
from mixers.offline.base import OfflineMixer
from mixers.offline.regmix import RegMixConfig, dirichlet_design
from mixers.regressors import make_regressor
from mixers.sampling import dirichlet_rows, inside
from mixers.search import Scorer
from mixopt.errors import Conflict, InvalidInput

__all__ = [
    "DIRECTION_DESCRIPTION",
    "DISTINCT_L1",
    "FIT_ERRORS",
    "DirectedConfig",
    "SequentialMixer",
    "can_fit",
    "check_model_name",
    "explore_rows",
    "fill",
    "fit_surrogate",
    "fitted_or_designed",
    "gives_std",
    "history_weights",
    "predict_with_std",
    "predictor",
]

log = logging.getLogger(__name__)

_EXPLORE_CHUNK = 64  # runs compared with the exploration pool at a time

DIRECTION_DESCRIPTION = (
    "whether a smaller ('minimize', a loss) or larger ('maximize', a score) objective is better; "
    "must match the experiment's objective direction"
)
DISTINCT_L1 = 1e-5
"""Proposals differ from each other and from the history by more than this (L1)."""
FIT_ERRORS = (ArithmeticError, ValueError, RuntimeError, np.linalg.LinAlgError, Conflict)
"""A fit that fails with one of these (degenerate data, no model converging) falls back to the
design: a proposal request should not fail because a surrogate could not be fitted."""


class DirectedConfig(MethodConfig):
    direction: Direction = Field(default="minimize", description=DIRECTION_DESCRIPTION)
    explore: float = Field(
        default=0.25,
        ge=0,
        le=1,
        description=(
            "share of each fitted batch (rounded up) spent on exploration: mixtures spread "
            "over the whole space, each as far (L1) as possible from every run so far, so "
            "that the fitted model stays right away from the optimum too (0: none)"
        ),
    )


DirectedT = TypeVar("DirectedT", bound=DirectedConfig)


class SequentialMixer(OfflineMixer[DirectedT]):
    """An offline method that fits its history: it optimises in the objective's direction,
    and once past its initial design its best run, found by that search, competes with the
    fit's searched mixture (``best_run_competes``)."""

    def complete_config(self, setup: ExperimentSetup) -> DirectedT:
        """``direction`` taken from the objective, or checked against it when given."""
        config = self.config
        if "direction" not in config.model_fields_set:
            return config.model_copy(update={"direction": setup.direction})
        if config.direction != setup.direction:
            raise InvalidInput.at(
                ("config", "direction"),
                f"config.direction {config.direction!r} contradicts the objective's "
                f"direction {setup.direction!r}; leave it out to follow the objective",
            )
        return config


def check_model_name(value: str) -> str:
    """``auto`` or a registered regressor (``fitting.check_model``), as a config validator."""
    try:
        check_model(value)
    except InvalidInput as exc:
        raise ValueError(exc.detail) from None
    return value


def history_weights(history: Sequence[Observation], k: int) -> FloatArray:
    """Every run's mixture (finished or not): new proposals must differ from all of them."""
    return np.array([np.asarray(obs.weights, dtype=float) for obs in history]).reshape(-1, k)


def can_fit(X: FloatArray) -> bool:
    """Enough runs (``MIN_RUNS``) on at least two distinct mixtures: what ``fit_model`` needs."""
    return len(X) >= MIN_RUNS and len(np.unique(np.round(X, REPLICATE_DECIMALS), axis=0)) >= 2


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


def explore_rows(
    space: DomainSpace,
    existing: FloatArray,
    count: int,
    rng: np.random.Generator,
    *,
    candidates: int = 1024,
) -> FloatArray:
    """``count`` mixtures spread over the whole space, far from the runs so far: greedy maximin
    over ``candidates`` mixtures uniform on the simplex (in the bounds), each pick the one
    farthest (L1) from every run and every earlier pick. Uniform, not swarm-like: the swarm's
    near-vertex mixtures would win every maximin, and the model should rank typical mixtures."""
    if count <= 0:
        return np.empty((0, space.k))
    pool = inside(space, dirichlet_rows(np.ones((max(candidates, 2 * count), space.k)), rng))
    nearest = np.full(len(pool), np.inf)
    for start in range(0, len(existing), _EXPLORE_CHUNK):  # bounded memory on long histories
        block = existing[start : start + _EXPLORE_CHUNK]
        gaps = np.abs(pool[:, None, :] - block[None, :, :]).sum(axis=2)
        nearest = np.minimum(nearest, gaps.min(axis=1))
    picked: list[int] = []
    for _ in range(min(count, len(pool))):
        i = int(np.argmax(nearest))
        if not nearest[i] > DISTINCT_L1:
            break
        picked.append(i)
        nearest = np.minimum(nearest, np.abs(pool - pool[i]).sum(axis=1))
    return pool[picked]


Optimiser = Callable[[FloatArray, FloatArray, FloatArray, int], FloatArray]
"""``(X, y, existing, count) -> rows``: a fitted method's ``count`` proposals from the usable
runs ``(X, y)``, differing from every mixture in ``existing`` (the runs so far, and the batch's
exploration rows)."""


def fitted_or_designed(
    method: str,
    space: DomainSpace,
    history: Sequence[Observation],
    count: int,
    rng: np.random.Generator,
    *,
    ready: bool,
    optimise: Optimiser,
    explore: float = 0.0,
) -> list[Proposal]:
    """What a method that fits its history proposes: once it is ``ready`` and the runs can be
    fitted, ``ceil(explore * count)`` exploration rows (``explore_rows``) and ``optimise``'s
    rows for the rest (``optimise`` is given the exploration rows among ``existing`` and asked
    for ``count`` minus them); RegMix's design before that, or when the fit fails (logged)."""
    existing = history_weights(history, space.k)
    usable = usable_runs(history, space.k, minimum=0)
    rows: FloatArray | None = None
    if ready and can_fit(usable.X):
        try:
            # Exploration first, so that the optimised rows differ from it.
            wide = explore_rows(space, existing, math.ceil(explore * count), rng)
            rest = count - len(wide)
            focused = (
                optimise(usable.X, usable.y, np.vstack([existing, wide]), rest)
                if rest > 0
                else np.empty((0, space.k))
            )
            rows = np.vstack([focused, wide])
        except FIT_ERRORS as exc:
            log.warning("%s: fitting failed, falling back to the design: %s", method, exc)
    if rows is None:
        rows = dirichlet_design(space, count, rng, RegMixConfig(), existing)
    return [Proposal(np.asarray(row, dtype=float)) for row in rows]
