"""QuaDMix's parameterised sampling function, its parameter space and the joint search.

QuaDMix (arXiv 2504.16511) selects documents by quality *and* domain with one function of a few
parameters per domain m (``N`` quality scores per document):

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
   parameters here follow the project's issue (merge, threshold, steepness, exponent), so
   ``ε = 0``.

Conventions: **higher quality scores are better** (pass ``-score`` for a lower-is-better
scorer). Unlike the paper, a QuaDMix run here also has explicit **domain weights**: the domain's
share of the sampled tokens; ``S`` then only distributes a domain's share over its documents.
Without weights (``weights=None``) the domain proportions emerge from the parameters, as in the
paper.

The run's ``params`` JSON is ``QuadMixParams.to_params()``::

    {"merge": {domain: {score: a}}, "threshold": {domain: ω}, "steepness": {domain: λ},
     "exponent": {domain: η}}

Regressors see a run as ``joint_features``: the weights (space order), then ``encode(params)``
(order in ``feature_names``). ``sample_params`` is the paper's Algorithm 1; ``recommend_joint``
is its search: sample candidates, score them with the fitted model, average the best ``top_k``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import rankdata

from mixers.base import SUM_TOLERANCE, DomainSpace, FloatArray
from mixers.fitting import swarm_samples
from mixopt.errors import ErrorItem, InvalidInput

__all__ = [
    "PARAM_KEYS",
    "JointRecommendation",
    "ParamRanges",
    "QuadMixParams",
    "Sampling",
    "decode",
    "encode",
    "feature_names",
    "joint_feature_names",
    "joint_features",
    "recommend_joint",
    "sample_documents",
    "sample_params",
    "sampling_probabilities",
    "sampling_values",
]

PARAM_KEYS = ("merge", "threshold", "steepness", "exponent")
"""The keys of a QuaDMix run's ``params``, in encoding order."""
_SCALARS = ("threshold", "steepness", "exponent")
Normalize = Literal["rank", "none"]
Loc = tuple[str | int, ...]


def _frozen(array: ArrayLike) -> FloatArray:
    out = np.array(array, dtype=float)  # a copy: the caller's array may change later
    out.setflags(write=False)
    return out


# --- parameters ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class QuadMixParams:
    """QuaDMix's sampling-function parameters for every domain (the paper's ``θ`` without ``ε``).

    ``merge[m, n]`` is ``α_{n,m}``: the weight of score ``scores[n]`` in domain ``domains[m]``
    (non-negative, each row summing to 1). ``threshold[m]`` (``ω``, in [0, 1]), ``steepness[m]``
    (``λ >= 0``) and ``exponent[m]`` (``η >= 0``) shape Eq. 3. The arrays are read-only copies.
    Build from JSON with ``from_params`` (validating), from a feature vector with ``decode``.
    """

    domains: tuple[str, ...]
    scores: tuple[str, ...]
    merge: FloatArray
    threshold: FloatArray
    steepness: FloatArray
    exponent: FloatArray

    def __post_init__(self) -> None:
        m, n = len(self.domains), len(self.scores)
        if m < 1 or n < 1:
            raise ValueError("QuaDMix parameters need at least one domain and one score")
        if len(set(self.domains)) != m or len(set(self.scores)) != n:
            raise ValueError("domain and score names must be distinct")
        for name, shape in (("merge", (m, n)), *((key, (m,)) for key in _SCALARS)):
            array = _frozen(getattr(self, name))
            if array.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
            if not np.all(np.isfinite(array)):
                raise ValueError(f"{name} must be finite")
            object.__setattr__(self, name, array)
        if np.any(self.merge < 0) or np.any(np.abs(self.merge.sum(axis=1) - 1) > SUM_TOLERANCE):
            raise ValueError("each domain's merge weights must be >= 0 and sum to 1")
        if np.any((self.threshold < 0) | (self.threshold > 1)):
            raise ValueError("thresholds must lie in [0, 1]")
        if np.any(self.steepness < 0) or np.any(self.exponent < 0):
            raise ValueError("steepness and exponent must be >= 0")

    def to_params(self) -> dict[str, Any]:
        """The run's ``params``: ``{"merge": {domain: {score: a}}, "threshold": {...}, ...}``."""
        out: dict[str, Any] = {
            "merge": {
                d: {s: float(a) for s, a in zip(self.scores, row, strict=True)}
                for d, row in zip(self.domains, self.merge, strict=True)
            }
        }
        for key in _SCALARS:
            values = getattr(self, key)
            out[key] = {d: float(v) for d, v in zip(self.domains, values, strict=True)}
        return out

    @classmethod
    def from_params(
        cls,
        params: Mapping[str, Any],
        domains: Sequence[str],
        scores: Sequence[str],
        *,
        loc: Loc = ("params",),
    ) -> QuadMixParams:
        """Parse and check a run's ``params`` JSON; every fault is reported, located under ``loc``.

        Exactly the keys ``merge``, ``threshold``, ``steepness``, ``exponent``, each covering
        exactly ``domains`` (and ``merge`` each of ``scores``); finite numbers; merge weights
        ``>= 0`` summing to 1 per domain (within 1e-6); threshold in [0, 1]; steepness and
        exponent ``>= 0``. Raises ``InvalidInput``.
        """
        domains, scores = tuple(domains), tuple(scores)
        errors: list[ErrorItem] = []
        if not isinstance(params, Mapping):
            raise InvalidInput.at(loc, "QuaDMix params must be an object")
        for key in params:
            if key not in PARAM_KEYS:
                errors.append(ErrorItem((*loc, str(key)), f"unknown key {key!r}"))

        def number(value: Any, where: Loc, *, upper: float | None = None) -> float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                errors.append(ErrorItem(where, "must be a number"))
                return math.nan
            x = float(value)
            if not math.isfinite(x):
                errors.append(ErrorItem(where, "must be finite"))
            elif x < 0:
                errors.append(ErrorItem(where, "must be >= 0"))
            elif upper is not None and x > upper:
                errors.append(ErrorItem(where, f"must be <= {upper:g}"))
            return x

        def table(value: Any, where: Loc, keys: tuple[str, ...], what: str) -> Mapping[str, Any]:
            if not isinstance(value, Mapping):
                errors.append(ErrorItem(where, f"must be an object keyed by {what}"))
                return {}
            for key in value:
                if key not in keys:
                    errors.append(ErrorItem((*where, str(key)), f"unknown {what[:-1]} {key!r}"))
            missing = [k for k in keys if k not in value]
            if missing:
                errors.append(ErrorItem(where, f"missing {what}: {', '.join(missing)}"))
            return value

        merge = np.full((len(domains), len(scores)), math.nan)
        if "merge" not in params:
            errors.append(ErrorItem(loc, "missing key 'merge'"))
        else:
            rows = table(params["merge"], (*loc, "merge"), domains, "domains")
            for i, d in enumerate(domains):
                if d not in rows:
                    continue
                where = (*loc, "merge", d)
                row = table(rows[d], where, scores, "scores")
                for j, s in enumerate(scores):
                    if s in row:
                        merge[i, j] = number(row[s], (*where, s))
                if np.all(np.isfinite(merge[i])) and np.all(merge[i] >= 0):
                    total = float(merge[i].sum())
                    if abs(total - 1) > SUM_TOLERANCE:
                        errors.append(ErrorItem(where, f"merge weights sum to {total:.9g}, not 1"))
        scalars: dict[str, FloatArray] = {}
        for key in _SCALARS:
            values = np.full(len(domains), math.nan)
            if key not in params:
                errors.append(ErrorItem(loc, f"missing key {key!r}"))
            else:
                given = table(params[key], (*loc, key), domains, "domains")
                upper = 1.0 if key == "threshold" else None
                for i, d in enumerate(domains):
                    if d in given:
                        values[i] = number(given[d], (*loc, key, d), upper=upper)
            scalars[key] = values
        if errors:
            raise InvalidInput("invalid QuaDMix params", errors)
        return cls(domains, scores, merge, **scalars)

    def feature_names(self) -> list[str]:
        """Names of ``encode(self)``'s entries (see the module function)."""
        return feature_names(self.domains, self.scores)


def feature_names(domains: Sequence[str], scores: Sequence[str]) -> list[str]:
    """The stable order of ``encode``: merge weights, then thresholds, steepnesses, exponents.

    ``merge:{domain}:{score}`` for each domain (in the given order) and, within it, each score;
    then ``threshold:{domain}``, ``steepness:{domain}``, ``exponent:{domain}``. Length
    ``M (N + 3)``.
    """
    names = [f"merge:{d}:{s}" for d in domains for s in scores]
    for key in _SCALARS:
        names.extend(f"{key}:{d}" for d in domains)
    return names


def encode(params: QuadMixParams) -> FloatArray:
    """The parameters as a flat float vector in ``feature_names`` order (raw values, no scaling).

    All ``N`` merge weights of a domain are kept (redundant, as they sum to 1): averaging encoded
    vectors then averages the merge weights, and trees need no reference score.
    """
    return np.concatenate(
        [params.merge.ravel(), params.threshold, params.steepness, params.exponent]
    )


def decode(vector: ArrayLike, domains: Sequence[str], scores: Sequence[str]) -> QuadMixParams:
    """The inverse of ``encode``, lenient so that averaged or perturbed vectors decode.

    Merge weights are clipped at 0 and renormalised per domain (all zero: uniform), thresholds
    clipped to [0, 1], steepness and exponent to ``>= 0``. ``decode(encode(p))`` equals ``p``.
    """
    domains, scores = tuple(domains), tuple(scores)
    m, n = len(domains), len(scores)
    v = np.asarray(vector, dtype=float).ravel()
    if v.shape != (m * (n + 3),):
        raise ValueError(f"expected {m * (n + 3)} values ({m} domains, {n} scores), got {v.size}")
    if not np.all(np.isfinite(v)):
        raise ValueError("the vector must be finite")
    merge = np.clip(v[: m * n].reshape(m, n), 0.0, None)
    totals = merge.sum(axis=1, keepdims=True)
    merge = np.where(totals > 0, merge / np.where(totals > 0, totals, 1.0), 1.0 / n)
    rest = v[m * n :].reshape(3, m)
    return QuadMixParams(
        domains,
        scores,
        merge,
        threshold=np.clip(rest[0], 0.0, 1.0),
        steepness=np.clip(rest[1], 0.0, None),
        exponent=np.clip(rest[2], 0.0, None),
    )


@dataclass(frozen=True)
class ParamRanges:
    """The ranges Algorithm 1 draws from: ``threshold = lo + (hi - lo) U(0, 1)``, and so on.

    Defaults are the paper's: ``ω̃ = 0.1 ω`` (the top 10 % at most), ``λ̃ = 1000 λ`` (the PDF's
    "103λ", read as 10³·λ like the clean-room code), ``η̃ = η``.
    """

    threshold: tuple[float, float] = (0.0, 0.1)
    steepness: tuple[float, float] = (0.0, 1000.0)
    exponent: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        for key in _SCALARS:
            lo, hi = getattr(self, key)
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
                raise ValueError(f"{key} range must satisfy 0 <= low <= high, got {(lo, hi)}")
        if self.threshold[1] > 1:
            raise ValueError("the threshold range must lie within [0, 1]")


def _names(space: DomainSpace | Sequence[str]) -> tuple[str, ...]:
    return tuple(space.names) if isinstance(space, DomainSpace) else tuple(space)


def _sample_arrays(
    m: int, n: int, count: int, rng: np.random.Generator, ranges: ParamRanges
) -> tuple[FloatArray, FloatArray]:
    """Algorithm 1 for ``count`` sets: merge ``(count, m, n)``, scalars ``(count, 3, m)``."""
    a = rng.random((count, n))
    a_tilde = a / np.maximum(a.sum(axis=1, keepdims=True), 1e-300)
    b = rng.random((count, m, n))
    ab = a_tilde[:, None, :] * b
    totals = ab.sum(axis=2, keepdims=True)
    merge = np.where(totals > 0, ab / np.where(totals > 0, totals, 1.0), 1.0 / n)
    u = rng.random((count, 3, m))
    lo = np.array([getattr(ranges, key)[0] for key in _SCALARS])[None, :, None]
    hi = np.array([getattr(ranges, key)[1] for key in _SCALARS])[None, :, None]
    return merge, lo + (hi - lo) * u


def sample_params(
    space: DomainSpace | Sequence[str],
    score_names: Sequence[str],
    count: int,
    rng: np.random.Generator,
    ranges: ParamRanges | None = None,
) -> list[QuadMixParams]:
    """``count`` parameter sets drawn by QuaDMix's Algorithm 1 (section 3.2 of the notes).

    Per set: global score weights ``a_n ~ U(0, 1)``, normalised to ``ã``; per domain
    ``b_{n,m} ~ U(0, 1)`` and ``α_{n,m} = ã_n b_{n,m} / Σ_i ã_i b_{i,m}``; per domain
    ``(λ, ω, η) ~ U(0, 1)³`` rescaled into ``ranges`` (default: ``1000 λ``, ``0.1 ω``, ``η``).
    ``space`` is the experiment's domain space (or its domain names).
    """
    domains, scores = _names(space), tuple(score_names)
    merge, scalars = _sample_arrays(len(domains), len(scores), count, rng, ranges or ParamRanges())
    return [
        QuadMixParams(domains, scores, merge[i], scalars[i, 0], scalars[i, 1], scalars[i, 2])
        for i in range(count)
    ]


# --- the sampling function -----------------------------------------------------------------------


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


# --- joint fitting and search --------------------------------------------------------------------


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


_CHUNK = 8192


def recommend_joint(
    space: DomainSpace,
    estimator_predict: Callable[[FloatArray], ArrayLike],
    rng: np.random.Generator,
    *,
    score_names: Sequence[str],
    candidates: int = 100_000,
    top_k: int = 10,
    direction: Literal["minimize", "maximize"] = "minimize",
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
    pool_x = np.empty((0, space.k * (len(scores) + 4)))
    pool_s = np.empty(0)
    drawn = 0
    while drawn < candidates:
        size = min(_CHUNK, candidates - drawn)
        drawn += size
        w = swarm_samples(space, size, rng) if fixed is None else np.tile(fixed, (size, 1))
        merge, scalars = _sample_arrays(space.k, len(scores), size, rng, ranges)
        x = np.hstack([w, merge.reshape(size, -1), scalars.reshape(size, -1)])
        s = sign * np.asarray(estimator_predict(x), dtype=float).ravel()
        s = np.where(np.isfinite(s), s, np.inf)
        pool_x = np.vstack([pool_x, x])
        pool_s = np.concatenate([pool_s, s])
        if len(pool_s) > top_k:
            keep = np.argpartition(pool_s, top_k - 1)[:top_k]
            pool_x, pool_s = pool_x[keep], pool_s[keep]
    best = pool_x.mean(axis=0)
    best_w = space.project(best[: space.k])[0]
    best_p = decode(best[space.k :], space.names, scores)
    predicted = float(
        np.asarray(estimator_predict(joint_features(space, best_w[None, :], [best_p]))).ravel()[0]
    )
    return JointRecommendation(best_w, best_p, predicted, drawn, top_k)
