"""QuaDMix's fit and search over the joint space of domain weights and sampling parameters.

Regressors see a run as ``joint_features``: its weights (space order), then ``encode(params)``.
``recommend_joint`` is the paper's search (section 3.3): sample candidates, score them with the
fitted model, average the best ``top_k``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from mixers.base import Direction, DomainSpace, FloatArray
from mixers.offline.quadmix.params import (
    ParamRanges,
    QuadMixParams,
    decode,
    encode,
    feature_names,
    sample_arrays,
)
from mixers.sampling import swarm_samples
from mixers.search import global_then_refine

__all__ = ["JointRecommendation", "joint_feature_names", "joint_features", "recommend_joint"]


def joint_feature_names(space: DomainSpace, score_names: Sequence[str]) -> list[str]:
    """Columns of ``joint_features``: ``weight:{domain}`` per domain, then ``feature_names``."""
    return [f"weight:{d}" for d in space.names] + feature_names(space.names, score_names)


def joint_features(
    space: DomainSpace,
    weights_rows: ArrayLike,
    params_list: Sequence[QuadMixParams | Mapping[str, Any]],
    score_names: Sequence[str] | None = None,
) -> FloatArray:
    """The regressor's design matrix: per run, its weights (space order), then ``encode(params)``.

    ``weights_rows``: ``(n, K)``. ``params_list``: ``n`` parameter sets, as ``QuadMixParams`` or
    as the runs' ``params`` JSON (parsed with ``from_params``, which needs ``score_names``; an
    ``InvalidInput`` then locates the fault at ``("params", ...)``). ``QuadMixParams`` must be
    over the space's domains (and over ``score_names`` when given). Shape ``(n, K + K (N + 3))``.
    """
    w = np.atleast_2d(np.asarray(weights_rows, dtype=float))
    if w.shape[1] != space.k or len(w) != len(params_list):
        raise ValueError(
            f"need {len(params_list)} weight rows of {space.k} columns, got shape {w.shape}"
        )
    parsed: list[QuadMixParams] = []
    for p in params_list:
        if not isinstance(p, QuadMixParams):
            if score_names is None:
                raise ValueError("score_names is needed to parse params given as JSON")
            p = QuadMixParams.from_params(p, space.names, score_names)
        parsed.append(p)
    scores = tuple(score_names) if score_names is not None else None
    for p in parsed:
        if p.domains != space.names or (scores is not None and p.scores != scores):
            raise ValueError("params must be over the space's domains and the given scores")
    if parsed and len({p.scores for p in parsed}) > 1:
        raise ValueError("every parameter set must have the same scores")
    if not parsed:
        n_params = 0 if scores is None else space.k * (len(scores) + 3)
        return np.empty((0, space.k + n_params))
    return np.hstack([w, np.vstack([encode(p) for p in parsed])])


@dataclass(frozen=True, eq=False)
class JointRecommendation:
    """``recommend_joint``'s answer: the mixture, the sampling parameters, the model's value."""

    weights: FloatArray
    params: QuadMixParams
    predicted: float
    candidates: int
    top_k: int

    def to_dict(self, space: DomainSpace) -> dict[str, Any]:
        """``{"weights": {domain: w}, "params": <params JSON>, "predicted": value}``."""
        return {
            "weights": space.to_dict(self.weights),
            "params": self.params.to_params(),
            "predicted": self.predicted,
        }


def recommend_joint(
    space: DomainSpace,
    estimator_predict: Callable[[FloatArray], ArrayLike],
    rng: np.random.Generator,
    *,
    score_names: Sequence[str],
    candidates: int = 100_000,
    top_k: int = 10,
    direction: Direction = "minimize",
    ranges: ParamRanges | None = None,
    weights: ArrayLike | None = None,
) -> JointRecommendation:
    """QuaDMix's search (section 3.3) over the joint space of weights and sampling parameters.

    Draws ``candidates`` points: weights from the RegMix-swarm Dirichlet in the space's bounds
    (or the fixed ``weights`` when given, to search the parameters alone), parameters from
    Algorithm 1 (``ranges``, the proposals' distribution: the paper samples from it rather than
    at random so the regressor is not asked about regions it never saw). Scores them with
    ``estimator_predict`` (``X -> predictions``, ``X`` from ``joint_features``, e.g.
    ``FitResult.estimator.predict``), in chunks; averages the best ``top_k`` (the paper: 10 of
    100,000) in the feature space (weights, and ``encode``d parameters), and decodes. The average
    of mixtures in the (convex) bounded simplex stays in it; merge weights stay normalised.
    """
    if candidates < 1 or top_k < 1:
        raise ValueError("candidates and top_k must be >= 1")
    scores = tuple(score_names)
    ranges = ranges or ParamRanges()
    sign = 1.0 if direction == "minimize" else -1.0
    top_k = min(top_k, candidates)
    fixed = None
    if weights is not None:
        fixed = space.project(np.asarray(weights, dtype=float))[0]

    def draw(size: int) -> FloatArray:
        w = swarm_samples(space, size, rng) if fixed is None else np.tile(fixed, (size, 1))
        merge, scalars = sample_arrays(space.k, len(scores), len(w), rng, ranges)
        return np.hstack([w, merge.reshape(len(w), -1), scalars.reshape(len(w), -1)])

    def score(x: FloatArray) -> FloatArray:
        s = sign * np.asarray(estimator_predict(x), dtype=float).ravel()
        return np.where(np.isfinite(s), s, np.inf)

    search = global_then_refine(
        score,
        draw=draw,
        candidates=candidates,
        keep=top_k,
        width=space.k * (len(scores) + 4),
    )
    pool_x = search.pool.rows
    best = pool_x.mean(axis=0)
    best_w = space.project(best[: space.k])[0]
    best_p = decode(best[space.k :], space.names, scores)
    predicted = float(
        np.asarray(estimator_predict(joint_features(space, best_w[None, :], [best_p]))).ravel()[0]
    )
    return JointRecommendation(best_w, best_p, predicted, search.scored, top_k)
