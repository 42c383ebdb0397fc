"""``quadmix``: QuaDMix's joint quality-and-domain design (ByteDance, arXiv 2504.16511).

Each proposal is a run with domain weights *and* QuaDMix sampling-function parameters
(``quadmix.params``): per domain, merge weights over the experiment's quality scores
(``config.quality_scores``), a quality threshold, a steepness and an exponent, stored as the
run's ``params``. The weights come from RegMix's Dirichlet design (``dirichlet_design``, with
this config's RegMix options); the parameters from the paper's Algorithm 1 (``sample_params``).

Explicit domain weights are an extension: in the paper the domain proportions emerge from the
parameters. Keeping them lets QuaDMix runs share the Run shape; a trainer applies a run with
``quadmix.sampling_probabilities`` / ``sample_documents``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, field_validator, model_validator

from mixers.backtest import Backtest, BacktestPlan
from mixers.base import Direction, DomainSpace, FloatArray, Observation, Proposal
from mixers.fitting import Fit, predict
from mixers.offline.base import OfflineMixer
from mixers.offline.quadmix.joint import joint_feature_names, joint_features, recommend_joint
from mixers.offline.quadmix.params import ParamRanges, QuadMixParams, sample_params
from mixers.offline.regmix import RegMixConfig, dirichlet_design
from mixers.recommendation import Prediction, Recommendation, SearchReport
from mixers.registry import register
from mixopt.errors import Conflict

__all__ = ["QuadMixConfig", "QuadMixMixer"]

MAX_QUALITY_SCORES = 32
SEARCH_CANDIDATES = 20_000
"""Joint candidates the recommendation scores (about 2 s with a 1000-tree model)."""
SEARCH_CANDIDATES = 20_000
"""Joint candidates the recommendation scores (about 2 s with a 1000-tree model)."""


class QuadMixConfig(RegMixConfig):
    """RegMix's design options (for the weights) plus the quality scores and parameter ranges."""

    quality_scores: list[str] = Field(
        min_length=1,
        max_length=MAX_QUALITY_SCORES,
        description="names of the documents' quality scores (higher is better), distinct "
        "identifiers; the merge weights of every domain are over these",
    )
    threshold_max: float = Field(
        default=0.1,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="thresholds are drawn from U(0, threshold_max) (paper: 0.1, the top 10 %)",
    )
    steepness_max: float = Field(
        default=1000.0,
        ge=0,
        allow_inf_nan=False,
        description="steepnesses are drawn from U(0, steepness_max) (paper: 1000)",
    )
    exponent_max: float = Field(
        default=1.0,
        ge=0,
        allow_inf_nan=False,
        description="exponents are drawn from U(0, exponent_max) (paper: 1)",
    )

    @field_validator("quality_scores")
    @classmethod
    def _distinct_identifiers(cls, names: list[str]) -> list[str]:
        bad = [n for n in names if not n.isidentifier()]
        if bad:
            listed = ", ".join(map(repr, bad))
            raise ValueError(f"quality score names must be identifiers: {listed}")
        if len(set(names)) != len(names):
            raise ValueError("quality score names must be distinct")
        return names

    @model_validator(mode="after")
    def _ranges(self) -> QuadMixConfig:
        self.param_ranges()  # raises ValueError for an impossible range
        return self

    def param_ranges(self) -> ParamRanges:
        """The ranges ``sample_params`` (and the search) draw the parameters from."""
        return ParamRanges(
            threshold=(0.0, self.threshold_max),
            steepness=(0.0, self.steepness_max),
            exponent=(0.0, self.exponent_max),
        )


@register
class QuadMixMixer(OfflineMixer[QuadMixConfig]):
    name: ClassVar[str] = "quadmix"
    description: ClassVar[str] = (
        "QuaDMix: proxy runs over domain weights and per-domain quality-sampling parameters "
        "(merge weights over config.quality_scores, threshold, steepness, exponent), a "
        "regressor over both, and the recommended weights and parameters from a search."
    )

    def propose(
        self,
        space: DomainSpace,
        history: Sequence[Observation],
        count: int,
        rng: np.random.Generator,
    ) -> list[Proposal]:
        """``count`` runs: Dirichlet-design weights, each with an Algorithm 1 parameter set.

        The weights are distinct from each other and from the history's where the space allows;
        in a space too narrow for ``count`` distinct mixtures (one domain, say) weights repeat
        and the (continuous, random) parameters keep the runs distinct.
        """
        if count <= 0:
            return []
        existing = np.array([obs.weights for obs in history]).reshape(-1, space.k)
        design = dirichlet_design(space, count, rng, self.config, existing)
        if len(design) < count:
            inside = existing[space.contains(existing)] if len(existing) else existing
            pool = np.vstack([design, inside])
            if len(pool) == 0:
                pool = space.project(space.prior)
            extra = pool[rng.integers(0, len(pool), size=count - len(design))]
            design = np.vstack([design, extra])
        params = sample_params(
            space, self.config.quality_scores, count, rng, self.config.param_ranges()
        )
        return [
            Proposal(np.array(row, dtype=float), p.to_params())
            for row, p in zip(design, params, strict=True)
        ]

    def check_params(self, space: DomainSpace, params: Mapping[str, Any]) -> None:
        """The fit reads every run's params: refuse bad ones when the run comes in."""
        QuadMixParams.from_params(params, space.names, self.config.quality_scores)

    def feature_names(self, space: DomainSpace) -> list[str]:
        return joint_feature_names(space, self.config.quality_scores)

    def features(
        self, space: DomainSpace, weights: FloatArray, params: Sequence[Mapping[str, Any]]
    ) -> FloatArray:
        """The weights and the encoded sampling parameters (``joint.joint_features``)."""
        parsed = [
            QuadMixParams.from_params(p, space.names, self.config.quality_scores, loc=(i, "params"))
            for i, p in enumerate(params)
        ]
        return joint_features(space, weights, parsed)

    def recommend(
        self,
        space: DomainSpace,
        fit: Fit,
        rng: np.random.Generator,
        history: Sequence[Observation] = (),
    ) -> Recommendation:
        """QuaDMix's search over weights and sampling parameters together. No baseline (the
        paper has no neutral parameter set to compare with), no alternatives, and no contest
        with the best run (``history`` is not used)."""
        started = time.perf_counter()
        joint = recommend_joint(
            space,
            fit.estimator.predict,
            rng,
            score_names=self.config.quality_scores,
            candidates=SEARCH_CANDIDATES,
            direction=fit.direction,
            ranges=self.config.param_ranges(),
        )
        features = joint_features(space, joint.weights[None, :], [joint.params])
        value, low, high = predict(fit, features)
        return Recommendation(
            weights=joint.weights,
            params=joint.params.to_params(),
            predicted=Prediction(float(value[0]), float(low[0]), float(high[0])),
            baseline=None,
            p_better_than_baseline=None,
            alternatives=(),
            model=fit.model,
            n_runs=fit.n_runs,
            search=SearchReport(
                candidates=joint.candidates,
                top_k=joint.top_k,
                seconds=round(time.perf_counter() - started, 4),
                trust_region=False,
            ),
        )

    def backtest(
        self,
        space: DomainSpace,
        history: Sequence[Observation],
        plan: BacktestPlan,
        *,
        direction: Direction,
        metric_weights: Mapping[str, float] | None = None,
    ) -> Backtest:
        raise Conflict(
            "backtest replays mixtures alone; a quadmix experiment's runs also differ by "
            "their sampling parameters"
        )
