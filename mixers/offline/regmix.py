"""``regmix``: RegMix's proxy-run design (Liu et al., ICLR 2025).

Dirichlet samples centred on the tempered token prior, with concentration scales from a log-spaced
ladder, rejection of samples far above the prior, and tiny weights zeroed. Unlike the reference
code, the experiment's min/max bounds and repetition caps hold for every proposal (checked after
zeroing and renormalising, not before), and domains the design would otherwise never give a real
share (tiny priors) are placed into some proposals on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from pydantic import Field, model_validator

from mixers.base import DomainSpace, FloatArray, MethodConfig, Observation, OfflineMixer, Proposal
from mixers.registry import register

__all__ = ["RegMixConfig", "RegMixMixer", "dirichlet_design"]


class RegMixConfig(MethodConfig):
    temperature: float = Field(
        default=0.5, gt=0, le=1, description="Dirichlet centre is prior**temperature (smooths skew)"
    )
    min_strength: float = Field(default=0.1, gt=0, description="smallest concentration scale")
    max_strength: float = Field(default=5.0, gt=0, description="largest concentration scale")
    strengths: int = Field(default=15, ge=1, le=100, description="log-spaced scales in the ladder")
    max_prior_multiple: float = Field(
        default=15.0, gt=1, description="reject samples with a weight above this multiple of prior"
    )
    min_share: float = Field(
        default=2e-4, ge=0, lt=0.1, description="weights below this are zeroed, then renormalised"
    )
    sample_multiplier: int = Field(
        default=10, ge=1, le=1000, description="candidates drawn per proposal before selection"
    )

    @model_validator(mode="after")
    def _ladder_ordered(self) -> RegMixConfig:
        if self.min_strength > self.max_strength:
            raise ValueError("min_strength must not exceed max_strength")
        return self


def _distinct(rows: FloatArray, existing: FloatArray, tol: float = 1e-5) -> FloatArray:
    """Rows not within L1 distance ``tol`` of each other or of ``existing``, in order."""
    kept: list[FloatArray] = []
    reference = [existing] if len(existing) else []
    for row in rows:
        pool = [*reference, np.array(kept)] if kept else reference
        if any(len(p) and np.abs(p - row).sum(axis=1).min() <= tol for p in pool):
            continue
        kept.append(row)
    return np.array(kept).reshape(-1, rows.shape[1])


def dirichlet_design(
    space: DomainSpace,
    count: int,
    rng: np.random.Generator,
    config: RegMixConfig | None = None,
    existing: FloatArray | None = None,
) -> FloatArray:
    """``count`` distinct mixtures (rows) in the space's bounds, new relative to ``existing``."""
    cfg = config or RegMixConfig()
    k = space.k
    existing = np.empty((0, k)) if existing is None else np.atleast_2d(existing)
    centre = space.prior**cfg.temperature
    centre /= centre.sum()
    ladder = np.logspace(np.log10(cfg.min_strength), np.log10(cfg.max_strength), cfg.strengths)
    ceiling = np.minimum(cfg.max_prior_multiple * space.prior, 1.0)

    chosen = np.empty((0, k))
    for attempt in range(8):
        n = max(count * cfg.sample_multiplier, 64)
        scales = rng.choice(ladder, size=n)
        # Tiny concentrations underflow to all-zero rows; a floor keeps every row drawable.
        alpha = np.maximum(centre[None, :] * scales[:, None], 1e-3)
        samples = np.array([rng.dirichlet(a) for a in alpha])
        if attempt < 4:  # the paper's rejection; relaxed if the bounds leave too few samples
            samples = samples[np.all(samples <= ceiling + 1e-12, axis=1)]
        samples = np.where(samples < cfg.min_share, 0.0, samples)
        samples = samples[samples.sum(axis=1) > 0]
        samples /= samples.sum(axis=1, keepdims=True)
        samples = space.project(samples)
        samples = samples[space.contains(samples)]
        fresh = _distinct(samples, np.vstack([existing, chosen]))
        need = count - len(chosen)
        if len(fresh) > need:
            fresh = fresh[rng.choice(len(fresh), size=need, replace=False)]
        chosen = np.vstack([chosen, fresh])
        if len(chosen) >= count:
            break
    return _cover_small_domains(space, chosen, existing, rng, cfg)


def _cover_small_domains(
    space: DomainSpace,
    chosen: FloatArray,
    existing: FloatArray,
    rng: np.random.Generator,
    cfg: RegMixConfig,
) -> FloatArray:
    """Give every domain that may be trained on a real share in at least one proposal.

    A domain with a tiny prior is zeroed in almost every Dirichlet sample (RegMix issue #10); the
    regressor then cannot learn its effect. Each such domain is mixed into one proposal with a
    share well above the zeroing threshold and its prior.
    """
    if len(chosen) == 0:
        return chosen
    seen = np.vstack([existing, chosen])
    share_floor = max(10 * cfg.min_share, 1e-3)
    missing = [
        i
        for i in range(space.k)
        if space.upper[i] >= share_floor and not np.any(seen[:, i] >= share_floor)
    ]
    rows = rng.permutation(len(chosen))
    for slot, i in enumerate(missing[: len(chosen)]):
        row = chosen[rows[slot]].copy()
        share = min(space.upper[i], max(0.5 / space.k, 3 * space.prior[i]))
        row = (1 - share) * row
        row[i] += share
        chosen[rows[slot]] = space.project(row)[0]
    return chosen


@register
class RegMixMixer(OfflineMixer):
    name: ClassVar[str] = "regmix"
    description: ClassVar[str] = (
        "RegMix: many small proxy runs on Dirichlet mixtures around the token prior, a regressor "
        "from mixture to loss, and the recommended mixture from a search over the fitted model."
    )
    Config: ClassVar[type[MethodConfig]] = RegMixConfig

    def propose(
        self,
        space: DomainSpace,
        history: Sequence[Observation],
        count: int,
        rng: np.random.Generator,
    ) -> list[Proposal]:
        assert isinstance(self.config, RegMixConfig)
        existing = np.array([obs.weights for obs in history]).reshape(-1, space.k)
        design = dirichlet_design(space, count, rng, self.config, existing)
        return [Proposal(row) for row in design]
