"""Random mixtures in a domain space: swarm-like, flat and neighbourhood Dirichlet samples.

Every design and every search draws its mixtures here, so "a mixture like RegMix's proxy swarm"
means the same thing everywhere: Dirichlet samples centred on the tempered prior
``prior**temperature`` (a smoothed token share), with a concentration scale drawn per sample from
a log-spaced ladder (small scales give sparse mixtures, large ones mixtures near the centre).

Samples are drawn as normalised gammas, row-wise, so one call draws any number of rows with
different concentrations. Everything returned lies within the space's bounds (``inside``).
"""

from __future__ import annotations

import numpy as np

from mixers.base import DomainSpace, FloatArray

__all__ = [
    "MIN_ALPHA",
    "SWARM_STRENGTHS",
    "SWARM_TEMPERATURE",
    "dirichlet_rows",
    "distinct_rows",
    "flat_samples",
    "global_samples",
    "inside",
    "neighbourhood",
    "strength_ladder",
    "swarm_centre",
    "swarm_dirichlet",
    "swarm_samples",
]

SWARM_TEMPERATURE = 0.5
"""RegMix's default: the swarm is centred on ``prior**0.5`` (normalised)."""
MIN_ALPHA = 1e-3
"""Floor on every Dirichlet parameter: tiny concentrations would underflow to all-zero rows."""


def strength_ladder(low: float = 0.1, high: float = 5.0, steps: int = 15) -> FloatArray:
    """RegMix's concentration scales: ``steps`` values log-spaced in ``[low, high]``."""
    return np.logspace(np.log10(low), np.log10(high), steps)


SWARM_STRENGTHS = strength_ladder()
"""The default ladder, 0.1 to 5 in 15 steps."""


def swarm_centre(space: DomainSpace, temperature: float = SWARM_TEMPERATURE) -> FloatArray:
    """``prior**temperature``, normalised: the centre of a swarm."""
    centre = space.prior**temperature
    out: FloatArray = centre / centre.sum()
    return out


def dirichlet_rows(
    alpha: FloatArray, rng: np.random.Generator, *, exact: bool = False
) -> FloatArray:
    """One Dirichlet draw per row of ``alpha``.

    By default as normalised gammas, all rows at once; a row whose gammas all underflow gets
    its mean (``alpha`` normalised). ``exact`` draws row by row with numpy's ``dirichlet``,
    which stays exact for tiny concentrations (where gammas underflow to exact zeros): slower,
    for designs of a few thousand rows whose draws must stay those of earlier versions.
    """
    if exact:
        return np.array([rng.dirichlet(a) for a in alpha]).reshape(alpha.shape)
    gammas = rng.standard_gamma(alpha)
    totals = gammas.sum(axis=1, keepdims=True)
    empty = totals[:, 0] <= 0
    gammas[empty] = alpha[empty]
    totals[empty] = alpha[empty].sum(axis=1, keepdims=True)
    return np.asarray(gammas / totals, dtype=float)


def swarm_dirichlet(
    centre: FloatArray,
    count: int,
    rng: np.random.Generator,
    strengths: FloatArray = SWARM_STRENGTHS,
    *,
    exact: bool = False,
) -> FloatArray:
    """``count`` raw swarm samples around ``centre`` (not yet moved into any bounds)."""
    scales = rng.choice(strengths, size=count)
    alpha = np.maximum(centre[None, :] * scales[:, None], MIN_ALPHA)
    return dirichlet_rows(alpha, rng, exact=exact)


def inside(space: DomainSpace, rows: FloatArray) -> FloatArray:
    """``rows`` moved into the bounds (rows already inside stay as they are); rows that still
    are not valid mixtures (non-finite) are dropped."""
    w = np.asarray(rows, dtype=float)
    if len(w) == 0:
        return w.reshape(0, space.k)
    outside = ~space.contains(w, tol=1e-12)
    if outside.any():
        w = w.copy()
        w[outside] = space.project(w[outside])
    keep = np.all(np.isfinite(w), axis=1) & space.contains(w)
    return np.asarray(w[keep], dtype=float)


def swarm_samples(
    space: DomainSpace,
    count: int,
    rng: np.random.Generator,
    *,
    temperature: float = SWARM_TEMPERATURE,
    strengths: FloatArray = SWARM_STRENGTHS,
) -> FloatArray:
    """``count`` mixtures like RegMix's proxy swarm, within the bounds."""
    return inside(space, swarm_dirichlet(swarm_centre(space, temperature), count, rng, strengths))


def flat_samples(space: DomainSpace, count: int, rng: np.random.Generator) -> FloatArray:
    """``count`` mixtures uniform on the simplex (Dirichlet(1)), within the bounds."""
    return inside(space, dirichlet_rows(np.ones((count, space.k)), rng))


def global_samples(space: DomainSpace, count: int, rng: np.random.Generator) -> FloatArray:
    """Mixtures spread over the whole space: half swarm-like, half uniform on the simplex (the
    swarm alone rarely visits the corners far from the prior)."""
    half = count // 2
    swarm = swarm_dirichlet(swarm_centre(space), half, rng)
    flat = dirichlet_rows(np.ones((count - half, space.k)), rng)
    return inside(space, np.vstack([swarm, flat]))


def neighbourhood(
    space: DomainSpace,
    centres: FloatArray,
    concentration: float | FloatArray,
    count: int,
    rng: np.random.Generator,
    *,
    floor: float = 0.02,
    min_alpha: float = MIN_ALPHA,
) -> FloatArray:
    """``count`` Dirichlet samples around the ``centres`` (rows, used in turn), in the bounds.

    Each draw is ``Dirichlet(c * ((1 - floor) * centre + floor / K))``, each parameter at least
    ``min_alpha``: mean near the centre, spread shrinking as the concentration ``c`` grows (about
    ``sqrt(w (1 - w) / c)`` per weight). ``floor`` and ``min_alpha`` keep the domains a centre
    lacks reachable in small amounts.
    """
    centres = np.atleast_2d(centres)
    which = np.arange(count) % len(centres)
    c = np.broadcast_to(np.asarray(concentration, dtype=float), (count,))
    base = (1.0 - floor) * centres[which] + floor / space.k
    alpha = np.maximum(c[:, None] * base, min_alpha)
    return inside(space, dirichlet_rows(alpha, rng))


def distinct_rows(rows: FloatArray, existing: FloatArray, tol: float = 1e-5) -> FloatArray:
    """Rows not within L1 distance ``tol`` of each other or of ``existing``, in order.

    Two rows that close also lie within ``tol`` along any direction ``u`` with all |u_i| <= 1
    (|u . (x - y)| <= |x - y|_1), so each row is compared only with the kept rows inside that
    window of the sorted projections: linear in the rows for spread-out designs.
    """
    k = rows.shape[1]
    pool = np.vstack([existing.reshape(-1, k), rows])
    first = len(pool) - len(rows)
    key = pool @ np.linspace(-1.0, 1.0, k)
    order = np.argsort(key, kind="stable")
    ordered = key[order]
    reach = tol + 1e-12  # and the rounding of the projections
    starts = np.searchsorted(ordered, key - reach, side="left")
    ends = np.searchsorted(ordered, key + reach, side="right")
    kept = np.zeros(len(pool), dtype=bool)
    kept[:first] = True
    for j in range(first, len(pool)):
        near = order[starts[j] : ends[j]]
        near = near[kept[near]]  # existing rows and the earlier rows kept so far
        if len(near) and np.abs(pool[near] - pool[j]).sum(axis=1).min() <= tol:
            continue
        kept[j] = True
    return rows[kept[first:]]
