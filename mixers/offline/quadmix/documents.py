"""QuaDMix's sampling function: which documents a run trains on, by quality and domain.

QuaDMix (arXiv 2504.16511) selects documents by quality *and* domain with one function of a few
parameters per domain m (``N`` quality scores per document, ``QuadMixParams``):

1. **Merge** (Eq. 1): ``q̄ = Σ_n α_{n,m} σ(q_n)``, ``σ`` a normalisation that puts the scores on
   one scale. Here ``σ`` is the corpus-wide rank of the score mapped into (0, 1) (``"rank"``,
   the clean-room implementation's default), or the identity (``"none"``).
2. **Rank within the domain, token-weighted** (Eq. 2): ``r̄`` = the share of the domain's tokens
   in documents of strictly better merged quality. ``r̄ = 0`` for the best document and
   ``r̄ = 0.05`` means that 5 % of the domain's tokens rank above. (The paper counts the
   document's own tokens too, ``≤``; counting only those strictly above differs by one document's
   share and guarantees that every domain with documents has one that is sampled.)
3. **Sampling value** (Eq. 3), the expected number of copies of the document::

       S(r̄) = (2 / (1 + exp(-λ_m (ω_m - r̄)))) ** η_m    if r̄ <= ω_m
       S(r̄) = 0                                        if r̄ >  ω_m

   with ``λ`` the steepness, ``ω`` the quality threshold and ``η`` the exponent. ``S`` lies in
   ``[1, 2**η]`` inside the threshold and falls towards 1 at it; ``λ = 0`` or ``η = 0`` give a
   hard cut. The paper also adds a tiny floor ``ε_m`` (at most 1e-3) to every document; the
   parameters here are merge, threshold, steepness and exponent, so ``ε = 0``.

Conventions: **higher quality scores are better** (pass ``-score`` for a lower-is-better
scorer). Unlike the paper, a QuaDMix run here also has explicit **domain weights**: the domain's
share of the sampled tokens; ``S`` then only distributes a domain's share over its documents.
Without weights (``weights=None``) the domain proportions emerge from the parameters, as in the
paper.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import rankdata

from mixers.base import FloatArray
from mixers.offline.quadmix.params import QuadMixParams

__all__ = ["Normalize", "Sampling", "sample_documents", "sampling_probabilities", "sampling_values"]

Normalize = Literal["rank", "none"]


@dataclass(frozen=True, eq=False)
class Sampling:
    """What the sampling function gives for a corpus, every array per document unless noted.

    ``quality``: merged quality ``q̄`` (Eq. 1). ``percentile``: ``r̄`` (Eq. 2, 0 = best).
    ``values``: ``S(r̄)`` (Eq. 3), the paper's expected copies. ``probabilities``: the chance
    that one draw picks the document (sums to 1). ``token_share``: the document's expected share
    of the sampled tokens (sums to 1). ``domain_share``: per domain of ``QuadMixParams.domains``,
    the expected share of the sampled tokens (equals the normalised weights when weights are
    given and every weighted domain has documents).
    """

    quality: FloatArray
    percentile: FloatArray
    values: FloatArray
    probabilities: FloatArray
    token_share: FloatArray
    domain_share: FloatArray
    domains: tuple[str, ...] = field(default=())

    def domain_shares(self) -> dict[str, float]:
        return {d: float(s) for d, s in zip(self.domains, self.domain_share, strict=True)}


def _score_matrix(
    scores: Mapping[str, ArrayLike] | ArrayLike, names: tuple[str, ...]
) -> FloatArray:
    if isinstance(scores, Mapping):
        missing = [s for s in names if s not in scores]
        if missing:
            raise ValueError(f"quality scores missing: {', '.join(missing)}")
        columns = [np.asarray(scores[s], dtype=float).ravel() for s in names]
        if len({len(c) for c in columns}) > 1:
            raise ValueError("every quality score needs one value per document")
        matrix = np.column_stack(columns)
    else:
        matrix = np.asarray(scores, dtype=float)
        if matrix.ndim == 1 and len(names) == 1:
            matrix = matrix[:, None]
        if matrix.ndim != 2 or matrix.shape[1] != len(names):
            raise ValueError(f"scores must have shape (docs, {len(names)}), got {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("quality scores must be finite")
    return matrix


def _domain_index(labels: ArrayLike, domains: tuple[str, ...], n_docs: int) -> NDArray[np.intp]:
    raw = np.asarray(labels).ravel()
    if raw.shape != (n_docs,):
        raise ValueError(f"expected {n_docs} domain labels, got {raw.size}")
    if raw.dtype.kind in "iu":
        if n_docs and (raw.min() < 0 or raw.max() >= len(domains)):
            raise ValueError(f"integer domain labels must lie in [0, {len(domains)})")
        return raw.astype(np.intp)
    uniques, inverse = np.unique(raw.astype(str), return_inverse=True)
    lookup = {d: i for i, d in enumerate(domains)}
    unknown = [str(u) for u in uniques if u not in lookup]
    if unknown:
        raise ValueError(f"unknown domain labels: {', '.join(unknown[:10])}")
    return np.array([lookup[str(u)] for u in uniques], dtype=np.intp)[inverse.ravel()]


def _tokens(tokens: ArrayLike | None, n_docs: int) -> FloatArray:
    if tokens is None:
        return np.ones(n_docs)
    t = np.asarray(tokens, dtype=float).ravel()
    if t.shape != (n_docs,):
        raise ValueError(f"expected {n_docs} token counts, got {t.size}")
    if not np.all(np.isfinite(t) & (t > 0)):
        raise ValueError("token counts must be finite and > 0")
    return t


def _normalise(matrix: FloatArray, how: Normalize) -> FloatArray:
    """``σ``: each score's corpus-wide average rank mapped into (0, 1), or the scores as given."""
    if how == "none":
        return matrix
    if how != "rank":
        raise ValueError(f"unknown normalisation {how!r}")
    n = len(matrix)
    return (np.asarray(rankdata(matrix, axis=0), dtype=float) - 0.5) / max(n, 1)


def _percentile(
    quality: FloatArray, dom: NDArray[np.intp], tokens: FloatArray, m: int
) -> FloatArray:
    """Eq. 2: per document, the share of its domain's tokens in strictly better documents.

    One sort by (domain, -quality); exclusive cumulative token sums, read at the start of each
    run of tied qualities and made relative to the start of the domain.
    """
    n = len(quality)
    if n == 0:
        return np.empty(0)
    order = np.lexsort((-quality, dom))
    q, d, t = quality[order], dom[order], tokens[order]
    before = np.cumsum(t) - t
    index = np.arange(n)
    new_domain = np.ones(n, dtype=bool)
    new_domain[1:] = d[1:] != d[:-1]
    new_tie = new_domain.copy()
    new_tie[1:] |= q[1:] != q[:-1]
    domain_start = np.maximum.accumulate(np.where(new_domain, index, 0))
    tie_start = np.maximum.accumulate(np.where(new_tie, index, 0))
    total = np.bincount(dom, weights=tokens, minlength=m)
    out = np.empty(n)
    out[order] = (before[tie_start] - before[domain_start]) / total[d]
    return out


def sampling_values(
    percentile: ArrayLike, threshold: ArrayLike, steepness: ArrayLike, exponent: ArrayLike
) -> FloatArray:
    """Eq. 3, elementwise: ``(2 / (1 + exp(-λ (ω - r̄)))) ** η`` where ``r̄ <= ω``, else 0.

    Inside the threshold the base lies in [1, 2) (``ω - r̄ >= 0``, so ``exp`` cannot overflow),
    so ``S`` is in ``[1, 2**η]``, non-increasing in ``r̄`` for ``λ, η >= 0``.
    """
    r = np.asarray(percentile, dtype=float)
    omega = np.asarray(threshold, dtype=float)
    lam = np.asarray(steepness, dtype=float)
    eta = np.asarray(exponent, dtype=float)
    gap = np.maximum(omega - r, 0.0)
    value = (2.0 / (1.0 + np.exp(-lam * gap))) ** eta
    out: FloatArray = np.where(r <= omega, value, 0.0)
    return out


def _weights_array(
    weights: Mapping[str, float] | ArrayLike, domains: tuple[str, ...]
) -> FloatArray:
    if isinstance(weights, Mapping):
        unknown = [k for k in weights if k not in domains]
        if unknown:
            raise ValueError(f"unknown domains in weights: {', '.join(map(str, unknown))}")
        w = np.array([float(weights.get(d, 0.0)) for d in domains])
    else:
        w = np.asarray(weights, dtype=float).ravel()
        if w.shape != (len(domains),):
            raise ValueError(f"expected {len(domains)} weights, got {w.size}")
    if not np.all(np.isfinite(w) & (w >= 0)) or w.sum() <= 0:
        raise ValueError("weights must be finite, >= 0 and not all 0")
    return w


def sampling_probabilities(
    scores: Mapping[str, ArrayLike] | ArrayLike,
    domains: ArrayLike,
    params: QuadMixParams,
    weights: Mapping[str, float] | ArrayLike | None = None,
    *,
    tokens: ArrayLike | None = None,
    normalize: Normalize = "rank",
) -> Sampling:
    """Apply QuaDMix's sampling function to a corpus of documents.

    ``scores``: score name -> one value per document (names ``params.scores``; extra names are
    ignored), or an array ``(documents, N)`` with columns in ``params.scores`` order; higher is
    better. ``domains``: each document's domain, a name of ``params.domains`` or an integer index
    into it. ``weights``: the run's domain weights (mapping or array in ``params.domains`` order;
    normalised to sum 1), or ``None`` for the paper's emergent proportions. ``tokens``: each
    document's length (default 1: every document counts the same). ``normalize``: ``σ`` of
    Eq. 1, ``"rank"`` (corpus-wide ranks in (0, 1)) or ``"none"``.

    With ``S`` from Eq. 1-3, one draw picks document ``x`` of domain ``m`` with probability

    * ``∝ S(x)`` without weights (copies as in the paper; domain ``m`` then gets
      ``Σ_{x∈m} S t / Σ S t`` of the tokens), or
    * ``∝ w_m S(x) / Σ_{y∈m} S(y) t_y`` with weights, so that domain ``m`` gets ``w_m`` of the
      expected tokens. A weighted domain without documents gets nothing; the other weights are
      renormalised (visible in ``domain_share``).

    Raises ``ValueError`` for malformed input (lengths, unknown labels, non-finite scores).
    """
    names = params.domains
    matrix = _score_matrix(scores, params.scores)
    n_docs = len(matrix)
    dom = _domain_index(domains, names, n_docs)
    t = _tokens(tokens, n_docs)
    m = len(names)

    quality = np.einsum("ij,ij->i", _normalise(matrix, normalize), params.merge[dom])
    percentile = _percentile(quality, dom, t, m)
    values = sampling_values(
        percentile, params.threshold[dom], params.steepness[dom], params.exponent[dom]
    )
    if weights is None:
        draw = values
    else:
        w = _weights_array(weights, names)
        mass = np.bincount(dom, weights=values * t, minlength=m)  # > 0 iff the domain has docs
        w = np.where(mass > 0, w, 0.0)
        if w.sum() <= 0:
            raise ValueError("no document belongs to a domain with a positive weight")
        w = w / w.sum()
        draw = w[dom] * values / np.where(mass > 0, mass, 1.0)[dom]
    total = float(draw.sum())
    if n_docs == 0 or total <= 0:
        raise ValueError("no document can be sampled")
    probabilities = draw / total
    token_mass = probabilities * t
    token_share = token_mass / token_mass.sum()
    return Sampling(
        quality=quality,
        percentile=percentile,
        values=values,
        probabilities=probabilities,
        token_share=token_share,
        domain_share=np.bincount(dom, weights=token_share, minlength=m).astype(float),
        domains=names,
    )


def sample_documents(
    scores: Mapping[str, ArrayLike] | ArrayLike,
    domains: ArrayLike,
    params: QuadMixParams,
    rng: np.random.Generator,
    weights: Mapping[str, float] | ArrayLike | None = None,
    *,
    budget: float | None = None,
    tokens: ArrayLike | None = None,
    normalize: Normalize = "rank",
) -> NDArray[np.int64]:
    """Draw a QuaDMix sample: the number of copies of each document (integers, per document).

    Each document gets ``floor(c) + Bernoulli(c - floor(c))`` copies, the paper's rule, with the
    expected copies ``c``: ``S`` itself when there are neither weights nor a ``budget``;
    otherwise ``c = budget * token_share / tokens``, so that the sample holds ``budget``
    tokens in expectation, split over the domains by ``weights`` (or, without weights, as ``S``
    splits them). ``budget`` defaults to ``Σ S t``, the size of the paper's sample. The other
    arguments are those of ``sampling_probabilities``.
    """
    result = sampling_probabilities(
        scores, domains, params, weights, tokens=tokens, normalize=normalize
    )
    t = _tokens(tokens, len(result.values))
    if weights is None and budget is None:
        expected = result.values
    else:
        total = float(np.sum(result.values * t)) if budget is None else float(budget)
        if not (math.isfinite(total) and total >= 0):
            raise ValueError("budget must be finite and >= 0")
        expected = total * result.token_share / t
    whole = np.floor(expected)
    extra = rng.random(len(expected)) < expected - whole
    return (whole + extra).astype(np.int64)
