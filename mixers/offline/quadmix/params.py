"""QuaDMix's sampling-function parameters: their JSON, their encoding and Algorithm 1.

Per domain ``m`` (``N`` quality scores per document): merge weights ``α_{n,m}`` over the scores
(non-negative, summing to 1), a quality threshold ``ω`` in [0, 1], a steepness ``λ >= 0`` and an
exponent ``η >= 0`` (see ``documents`` for what they do). A run's ``params`` JSON is
``QuadMixParams.to_params()``::

    {"merge": {domain: {score: a}}, "threshold": {domain: ω}, "steepness": {domain: λ},
     "exponent": {domain: η}}

Regressors see the parameters as ``encode(params)`` (order in ``feature_names``);
``sample_params`` is the paper's Algorithm 1, the proposals' distribution.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from mixers.base import SUM_TOLERANCE, DomainSpace, FloatArray
from mixopt.errors import ErrorItem, InvalidInput

__all__ = [
    "PARAM_KEYS",
    "ParamRanges",
    "QuadMixParams",
    "decode",
    "encode",
    "feature_names",
    "sample_arrays",
    "sample_params",
]

PARAM_KEYS = ("merge", "threshold", "steepness", "exponent")
"""The keys of a QuaDMix run's ``params``, in encoding order."""
_SCALARS = ("threshold", "steepness", "exponent")
Loc = tuple[str | int, ...]


def _frozen(array: ArrayLike) -> FloatArray:
    out = np.array(array, dtype=float)  # a copy: the caller's array may change later
    out.setflags(write=False)
    return out


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


def sample_arrays(
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
    """``count`` parameter sets drawn by QuaDMix's Algorithm 1.

    Per set: global score weights ``a_n ~ U(0, 1)``, normalised to ``ã``; per domain
    ``b_{n,m} ~ U(0, 1)`` and ``α_{n,m} = ã_n b_{n,m} / Σ_i ã_i b_{i,m}``; per domain
    ``(λ, ω, η) ~ U(0, 1)³`` rescaled into ``ranges`` (default: ``1000 λ``, ``0.1 ω``, ``η``).
    ``space`` is the experiment's domain space (or its domain names).
    """
    domains, scores = _names(space), tuple(score_names)
    merge, scalars = sample_arrays(len(domains), len(scores), count, rng, ranges or ParamRanges())
    return [
        QuadMixParams(domains, scores, merge[i], scalars[i, 0], scalars[i, 1], scalars[i, 2])
        for i in range(count)
    ]
