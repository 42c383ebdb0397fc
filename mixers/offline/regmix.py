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

from mixers.base import DomainSpace, FloatArray, MethodConfig, Observation, Proposal
from mixers.offline.base import OfflineMixer
from mixers.registry import register
from mixers.sampling import distinct_rows, strength_ladder, swarm_centre, swarm_dirichlet

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
    centre = swarm_centre(space, cfg.temperature)
    ladder = strength_ladder(cfg.min_strength, cfg.max_strength, cfg.strengths)
    ceiling = np.minimum(cfg.max_prior_multiple * space.prior, 1.0)

    chosen = np.empty((0, k))
    for attempt in range(8):
        if attempt == 4:
            # When the tempered prior lies far outside the bounds (say a domain holding 99.998 %
            # of the prior capped at 0.2), nearly every sample projects onto the same vertex.
            # With the rejection, relax the centre too: the prior moved into the bounds (a no-op
            # when it is inside already).
            centre = space.project(centre)[0]
        n = max(count * cfg.sample_multiplier, 64)
        samples = swarm_dirichlet(centre, n, rng, ladder, exact=True)
        if attempt < 4:  # the paper's rejection; relaxed if the bounds leave too few samples
            samples = samples[np.all(samples <= ceiling + 1e-12, axis=1)]
        samples = np.where(samples < cfg.min_share, 0.0, samples)
        samples = samples[samples.sum(axis=1) > 0]
        samples /= samples.sum(axis=1, keepdims=True)
        samples = space.project(samples)
        samples = samples[space.contains(samples)]
        fresh = distinct_rows(samples, np.vstack([existing, chosen]))
        need = count - len(chosen)
        if len(fresh) > need:
            fresh = fresh[rng.choice(len(fresh), size=need, replace=False)]
        chosen = np.vstack([chosen, fresh])
        if len(chosen) >= count:
            break
    chosen = _fill_by_mixing(space, chosen, existing, count, rng)
    return _cover_small_domains(space, chosen, existing, rng, cfg)


def _fill_by_mixing(
    space: DomainSpace,
    chosen: FloatArray,
    existing: FloatArray,
    count: int,
    rng: np.random.Generator,
) -> FloatArray:
    """Top ``chosen`` up to ``count`` rows with random convex combinations of mixtures in the space.

    In a narrow space (say web within [0.47, 0.50] of two domains) the projection puts most
    samples on the same few vertices, too few distinct mixtures for the count. Mixtures on the
    segment between two mixtures in the (convex) bounded simplex are in it too. A last resort
    only: a design that already has ``count`` rows is returned untouched.
    """
    inside = existing[space.contains(existing)] if len(existing) else existing
    for _ in range(8):
        need = count - len(chosen)
        pool = np.vstack([chosen, inside])
        if need <= 0 or len(pool) < 2:
            break
        pairs = rng.integers(0, len(pool), size=(4 * need, 2))
        mix = rng.random((4 * need, 1))
        candidates = space.project(mix * pool[pairs[:, 0]] + (1 - mix) * pool[pairs[:, 1]])
        candidates = candidates[space.contains(candidates)]
        chosen = np.vstack(
            [chosen, distinct_rows(candidates, np.vstack([existing, chosen]))[:need]]
        )
    return chosen


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
    share_floor = max(10 * cfg.min_share, 1e-3)
    free = 1.0 - float(space.lower.sum())
    # The most each domain can hold: its upper bound, or all the mass the lower bounds leave.
    reach = np.minimum(space.upper, space.lower + free)
    # The target is the floor or, when lower, what the domain can hold: a domain whose bound
    # (often a repetition cap) lies between 1e-3 and the floor (2e-3 by default) gets a share.
    target = np.minimum(share_floor, reach) * (1 - 1e-9)
    for _ in range(3):  # again if covering one domain took the only real share of another
        seen = np.vstack([existing, chosen])
        missing = [
            i for i in range(space.k) if reach[i] >= 1e-3 and not np.any(seen[:, i] >= target[i])
        ]
        if not missing:
            break
        rows = rng.permutation(len(chosen))
        for slot, i in enumerate(missing[: len(chosen)]):
            row = chosen[rows[slot]]
            share = min(reach[i], max(0.5 / space.k, 3 * space.prior[i], share_floor))
            # Move the row towards the point where domain i holds all the free mass, just far
            # enough that it holds ``share``. The other weights shrink towards their lower
            # bounds, so the row stays within the bounds (scaling them by 1 - share would push
            # weights at a lower bound below it, and projecting back would cut the new share).
            vertex = space.lower.copy()
            vertex[i] += free
            step = (share - row[i]) / (vertex[i] - row[i])
            chosen[rows[slot]] = space.project(row + step * (vertex - row))[0]
    return chosen


@register
class RegMixMixer(OfflineMixer[RegMixConfig]):
    name: ClassVar[str] = "regmix"
    description: ClassVar[str] = (
        "RegMix: many small proxy runs on Dirichlet mixtures around the token prior, a regressor "
        "from mixture to loss, and the recommended mixture from a search over the fitted model."
    )

    def propose(
        self,
        space: DomainSpace,
        history: Sequence[Observation],
        count: int,
        rng: np.random.Generator,
    ) -> list[Proposal]:
        existing = np.array([obs.weights for obs in history]).reshape(-1, space.k)
        design = dirichlet_design(space, count, rng, self.config, existing)
        return [Proposal(row) for row in design]
