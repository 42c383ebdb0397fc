"""Core abstractions of the mixing methods: the domain space, method configs, the mixer base.

Pure: numpy and pydantic only. The service keeps all state; a mixer gets what it needs on every
call (like an Optuna sampler, which is handed the study's trials instead of remembering them).
"""

from __future__ import annotations

import math
from abc import ABC
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, Self, TypeVar, get_args

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mixopt.errors import ErrorItem, InvalidInput, InvalidMixture

__all__ = [
    "SUM_TOLERANCE",
    "Direction",
    "DomainSpace",
    "ExperimentSetup",
    "MethodConfig",
    "Mixer",
    "Observation",
    "Proposal",
    "RunLookup",
    "RunSummary",
    "spread_residual",
]

SUM_TOLERANCE = 1e-6
"""Weights must sum to 1 within this (the contract's rule)."""

FloatArray = NDArray[np.float64]
Mode = Literal["offline", "online"]
Direction = Literal["minimize", "maximize"]
"""Whether a smaller objective (a loss) or a larger one (a score) is better."""


def spread_residual(
    w: FloatArray, lower: FloatArray, upper: FloatArray, *, frozen: NDArray[np.bool_] | None = None
) -> FloatArray:
    """Mixtures ``w`` (rows, or one), within ``[lower, upper]`` but summing to 1 only up to a
    rounding error (a solver's answer), moved to sum to 1 without leaving the bounds: the error
    is shared in proportion to each weight's room towards the bound it moves to (none for the
    ``frozen`` ones). Dividing by the sum instead pushes a weight at its lower bound below it."""
    residual = 1.0 - w.sum(axis=-1, keepdims=True)
    room = np.where(residual > 0, upper - w, w - lower)
    if frozen is not None:
        room = np.where(frozen, 0.0, room)
    share = room / np.maximum(room.sum(axis=-1, keepdims=True), 1e-300)
    return np.asarray(np.clip(w + residual * share, lower, upper), dtype=float)


def _solve_clipped(
    m: FloatArray, c: FloatArray, lo: FloatArray, hi: FloatArray
) -> tuple[FloatArray, NDArray[np.bool_]]:
    """Row-wise ``t`` with ``sum_i clip(m_i t + c_i, lo_i, hi_i) = 1`` (``m >= 0``); the points.

    The sum is continuous, non-decreasing and piecewise linear in ``t``: weight ``i`` leaves its
    lower bound at ``(lo_i - c_i) / m_i`` and reaches its upper bound at ``(hi_i - c_i) / m_i``.
    A binary search over these sorted breakpoints (about log2(2K) evaluations of the sum) finds
    the linear piece that crosses 1; on it the free weights are known exactly, so ``t`` is one
    division, with no cancellation between weights of very different sizes. Also returns, per
    row, whether 1 is reachable at all.
    """
    n, k = m.shape
    active = m > 0
    safe = np.where(active, m, 1.0)
    enter = np.where(active, (lo - c) / safe, np.inf)
    leave = np.where(active, (hi - c) / safe, np.inf)
    points = np.sort(
        np.concatenate([np.where(active, enter, 0.0), np.where(active, leave, 0.0)], axis=1), axis=1
    )
    rows = np.arange(n)

    def total(t: FloatArray) -> FloatArray:
        return np.clip(m * t[:, None] + c, lo, hi).sum(axis=1)  # type: ignore[no-any-return]

    # Smallest j with total(points[j]) >= 1, by bisection on the index; -1 stands for -inf.
    low = np.full(n, -1)
    high = np.full(n, 2 * k - 1)
    ok: NDArray[np.bool_] = total(points[:, -1]) >= 1.0
    while np.any(high - low > 1):
        mid = (low + high) // 2
        above = total(points[rows, np.maximum(mid, 0)]) >= 1.0
        high = np.where(above, mid, high)
        low = np.where(above, low, mid)
    left = np.where(low >= 0, points[rows, np.maximum(low, 0)], -np.inf)
    right = points[rows, high]
    free = active & (enter <= left[:, None]) & (leave >= right[:, None])
    slope = np.where(free, m, 0.0).sum(axis=1)
    # Off the free set the weights sit at a bound on the whole piece: evaluate them at its end.
    fixed = np.where(free, 0.0, np.clip(m * right[:, None] + c, lo, hi)).sum(axis=1)
    rest = 1.0 - fixed - np.where(free, c, 0.0).sum(axis=1)
    t = np.where(slope > 0, rest / np.where(slope > 0, slope, 1.0), right)
    out: FloatArray = np.clip(m * t[:, None] + c, lo, hi)
    return out, ok


@dataclass(frozen=True, eq=False)
class DomainSpace:
    """The experiment's domains in one canonical order, with prior and bounds.

    ``upper`` is the effective upper bound: the declared ``max_weight`` tightened by the repetition
    cap ``max_epochs * tokens / train_tokens`` where the experiment gives both.
    """

    names: tuple[str, ...]
    prior: FloatArray
    tokens: tuple[float | None, ...]
    lower: FloatArray
    upper: FloatArray
    declared_upper: FloatArray

    @classmethod
    def from_domains(
        cls,
        domains: Sequence[Mapping[str, Any]],
        *,
        train_tokens: float | None = None,
        max_epochs: float | None = None,
        loc: tuple[str | int, ...] = ("domains",),
    ) -> DomainSpace:
        """Build and check a space; infeasible bounds raise ``InvalidInput`` naming the field."""
        names = tuple(str(d["name"]) for d in domains)
        tokens = tuple(None if d.get("tokens") is None else float(d["tokens"]) for d in domains)
        priors = [d.get("prior") for d in domains]
        lower = np.array([float(d.get("min_weight", 0.0)) for d in domains])
        declared = np.array([float(d.get("max_weight", 1.0)) for d in domains])
        k = len(names)

        given = [p is not None for p in priors]
        source = "prior"
        if all(given):
            raw = np.array([float(p) for p in priors if p is not None])
        elif any(given):
            missing = [i for i, g in enumerate(given) if not g]
            raise InvalidInput(
                "give a prior for every domain or for none",
                [
                    ErrorItem((*loc, i, "prior"), "prior missing while others are given")
                    for i in missing
                ],
            )
        elif all(t is not None for t in tokens):
            raw = np.array([float(t) for t in tokens if t is not None])
            source = "tokens"
        else:
            raw = np.ones(k)
        # Scaled by the largest first: values near the float limit must not overflow the sum
        # (which would make every prior 0).
        prior = raw / raw.max()
        prior = prior / prior.sum()
        if not np.all(np.isfinite(prior) & (prior > 0)):
            raise InvalidInput(
                f"the domains' {source} values span too wide a range to normalise",
                [
                    ErrorItem((*loc, i, source), f"{source} is too small next to the others")
                    for i in range(k)
                    if not (np.isfinite(prior[i]) and prior[i] > 0)
                ],
            )

        upper = declared.copy()
        if train_tokens is not None and max_epochs is not None:
            for i, t in enumerate(tokens):
                if t is not None:
                    upper[i] = min(upper[i], max_epochs * t / train_tokens)

        errors = [
            ErrorItem(
                (*loc, i, "min_weight"),
                f"min_weight {lower[i]:g} exceeds the repetition cap {upper[i]:.6g} "
                f"(max_epochs x tokens / train_tokens)",
            )
            for i in range(k)
            if lower[i] > upper[i] + 1e-12
        ]
        if errors:
            raise InvalidInput("bounds are infeasible", errors)
        if lower.sum() > 1 + 1e-9:
            raise InvalidInput.at(
                loc, f"bounds are infeasible: the min_weights sum to {lower.sum():.6g} > 1"
            )
        if upper.sum() < 1 - 1e-9:
            raise InvalidInput.at(
                loc,
                f"bounds are infeasible: the upper bounds (max_weight and repetition caps) "
                f"sum to {upper.sum():.6g} < 1",
            )
        return cls(names, prior, tokens, lower, upper, declared)

    @classmethod
    def from_swarm(cls, names: Sequence[str], weights: FloatArray) -> DomainSpace:
        """Unbounded domains whose prior is a swarm's mean mixture (rows of ``weights``): the
        centre a swarm was drawn around, when its token prior is not at hand. A domain no run
        gave weight keeps a tiny prior, so the space still builds."""
        mean = np.asarray(weights, dtype=float).reshape(-1, len(names)).mean(axis=0)
        return cls.from_domains(
            [{"name": n, "prior": float(max(p, 1e-12))} for n, p in zip(names, mean, strict=True)]
        )

    @property
    def k(self) -> int:
        return len(self.names)

    def to_dict(self, weights: FloatArray) -> dict[str, float]:
        return {name: float(w) for name, w in zip(self.names, weights, strict=True)}

    def to_array(self, weights: Mapping[str, float]) -> FloatArray:
        return np.array([float(weights[name]) for name in self.names])

    def validate_weights(
        self,
        weights: Mapping[str, float],
        *,
        loc: tuple[str | int, ...] = ("weights",),
        enforce_bounds: bool = False,
    ) -> FloatArray:
        """Check that ``weights`` is a mixture over exactly these domains; return it as an array.

        The API never renormalises: a sum off by more than ``SUM_TOLERANCE`` is an error.
        """
        errors: list[ErrorItem] = []
        known = set(self.names)
        for key in weights:
            if key not in known:
                errors.append(ErrorItem((*loc, key), f"unknown domain {key!r}"))
        missing = [name for name in self.names if name not in weights]
        if missing:
            errors.append(ErrorItem(loc, f"missing domains: {', '.join(missing)}"))
        for key, value in weights.items():
            if not isinstance(value, int | float) or not math.isfinite(value):
                errors.append(ErrorItem((*loc, key), "weight must be a finite number"))
            elif value < 0:
                errors.append(ErrorItem((*loc, key), "weight must be >= 0"))
        if errors:
            raise InvalidMixture("weights are not a mixture over the experiment's domains", errors)
        array = self.to_array(weights)
        total = float(array.sum())
        if abs(total - 1.0) > SUM_TOLERANCE:
            raise InvalidMixture.at(
                loc, f"weights sum to {total:.9g}, not 1 (tolerance {SUM_TOLERANCE:g})"
            )
        if enforce_bounds:
            bad = [
                ErrorItem((*loc, name), f"outside [{lo:g}, {hi:.6g}]")
                for name, w, lo, hi in zip(self.names, array, self.lower, self.upper, strict=True)
                if w < lo - SUM_TOLERANCE or w > hi + SUM_TOLERANCE
            ]
            if bad:
                raise InvalidMixture("weights break the experiment's bounds", bad)
        return array

    def contains(self, weights: FloatArray, tol: float = SUM_TOLERANCE) -> NDArray[np.bool_]:
        """Row-wise: is each mixture on the simplex and within the bounds?"""
        w = np.atleast_2d(weights)
        inside: NDArray[np.bool_] = (
            (np.abs(w.sum(axis=1) - 1) <= tol)
            & np.all(w >= self.lower - tol, axis=1)
            & np.all(w <= self.upper + tol, axis=1)
        )
        return inside

    def project(self, points: FloatArray) -> FloatArray:
        """Map non-negative points (rows) onto the bounded simplex.

        Rows whose support can reach a sum of 1 within the bounds are scaled,
        ``clip(g v, lower, upper)``: zero weights stay at zero, so sparse Dirichlet samples stay
        sparse. The others are shifted, ``clip(v + s, lower, upper)``. ``g`` and ``s`` come
        exactly from a search over the sorted breakpoints of the piecewise-linear sum
        (``_solve_clipped``), on rows brought to a largest weight of 1. Rows with a weight below
        1e-300 of their largest (subnormal draws) would put breakpoints at infinity: they, and a
        row the exact solve misses (by more than 1e-9, or off the bounded simplex), go through
        ``_project_by_bisection``.
        """
        lo, hi = self.lower, self.upper
        v = np.clip(np.atleast_2d(np.asarray(points, dtype=float)), 0.0, None)
        pos = v > 0
        scaled = np.where(pos, hi, lo).sum(axis=1) >= 1 - 1e-12
        # Scaling does not depend on a row's scale (shifting does: those rows stay as given).
        unit = v / np.maximum(v.max(axis=1, keepdims=True), 1e-300)
        # Weights below 1e-300 of the row's largest would put breakpoints near infinity: such
        # rows (subnormal Dirichlet draws, absurd ranges) go through the bisection, in logs.
        extreme = scaled & np.any((unit > 0) & (unit < 1e-300), axis=1)
        unit = np.where(unit >= 1e-300, unit, 0.0)
        with np.errstate(all="ignore"):
            out, ok = _solve_clipped(
                np.where(scaled[:, None], unit, 1.0), np.where(scaled[:, None], 0.0, v), lo, hi
            )
            ok &= np.abs(1.0 - out.sum(axis=1)) <= 1e-9
            # Absorb the rounding error where there is room, never on a scaled row's zeros.
            out = spread_residual(out, lo, hi, frozen=scaled[:, None] & (unit == 0))
        bad = extreme | ~ok | ~np.all(np.isfinite(out), axis=1) | ~self.contains(out, tol=1e-12)
        if bad.any():
            out[bad] = self._project_by_bisection(v[bad])
        return out

    def _project_by_bisection(self, points: FloatArray) -> FloatArray:
        """``project`` by bisection: slower, but robust for rows the exact solve cannot take.

        First by scaling, ``clip(g * v, lower, upper)`` with ``g`` found by bisection: it keeps
        zero weights at zero, so sparse Dirichlet samples stay sparse. Where the support of a row
        cannot reach 1 within the bounds, by the Euclidean projection ``clip(v + s, lower, upper)``.
        """
        v = np.clip(np.atleast_2d(np.asarray(points, dtype=float)), 0.0, None)
        lo, hi = self.lower, self.upper

        def bisect(make: Any, low: FloatArray, high: FloatArray) -> FloatArray:
            for _ in range(100):
                mid = (low + high) / 2
                too_big = make(mid).sum(axis=1) > 1
                high = np.where(too_big, mid, high)
                low = np.where(too_big, low, mid)
            return make((low + high) / 2)  # type: ignore[no-any-return]

        reachable = np.where(v > 0, hi, lo).sum(axis=1) >= 1 - 1e-12
        out = np.empty_like(v)
        if reachable.any():
            vr = v[reachable]
            # Bisect on log g: a bracket on g itself overflows to inf for subnormal weights and,
            # for rows spanning many orders of magnitude (0.5 beside 1e-40), is so wide that 100
            # halvings leave g far off. The result does not depend on the scale of a row, so
            # each is first scaled to a maximum of 1, in logs so that weights 600 orders of
            # magnitude below the maximum do not underflow.
            with np.errstate(divide="ignore", invalid="ignore"):
                log_v = np.log(vr)  # -inf for zero weights: exp() gives them back as 0
                peak = log_v.max(axis=1, keepdims=True)  # -inf only for an all-zero row
                log_v = log_v - np.where(np.isfinite(peak), peak, 0.0)
                # At g = max(upper / v) every positive weight sits at its upper bound: sum >= 1.
                log_high = np.where(vr > 0, np.log(hi) - log_v, -np.inf).max(axis=1)
            # At g = (1 - sum(lower)) / sum(v) every weight is <= lower + g v: the sum is <= 1.
            spare = max(1.0 - float(lo.sum()), 1e-300)
            log_low = np.log(spare) - np.log(np.maximum(np.exp(log_v).sum(axis=1), 1.0))

            def scale(log_g: FloatArray) -> FloatArray:
                with np.errstate(over="ignore"):  # exp -> inf is clipped to the upper bound
                    return np.clip(np.exp(log_v + log_g[:, None]), lo, hi)  # type: ignore[no-any-return]

            out[reachable] = bisect(scale, log_low, np.maximum(log_high, log_low))
        if (~reachable).any():
            vu = v[~reachable]
            # clip(v + s) with s in [0, max(upper)], increasing in s as ``bisect`` needs. At
            # s = 0 the sum is at most the support's upper bounds plus the others' lower bounds,
            # < 1 for these rows; at s = max(upper) every weight is at its upper bound, so the
            # sum >= 1. The bracket does not grow with the values: huge ones keep full precision.
            out[~reachable] = bisect(
                lambda s: np.clip(vu + s[:, None], lo, hi),
                np.zeros(len(vu)),
                np.full(len(vu), float(hi.max())),
            )
        # Bisection leaves an error near machine precision; absorb it where there is room.
        residual = 1.0 - out.sum(axis=1)
        room = np.where(residual[:, None] > 0, hi - out, out - lo)
        # Never onto the zero weights of a scaled row, so sparse rows keep exact zeros; its
        # support has room for the residual, which is what made it ``reachable``.
        room = np.where(reachable[:, None] & (v == 0), 0.0, room)
        share = room / np.maximum(room.sum(axis=1, keepdims=True), 1e-300)
        return np.clip(out + residual[:, None] * share, lo, hi)  # type: ignore[no-any-return]


class MethodConfig(BaseModel):
    """The config keys every method shares; each method adds its own options.

    Unknown keys are refused (422), so a typo never silently falls back to a default.
    """

    model_config = ConfigDict(extra="forbid")

    seed: int | None = Field(
        default=None,
        # numpy's and scikit-learn's seeds: a negative one failed the first proposals with a 500
        ge=0,
        le=2**32 - 1,
        description="seed of every random choice; chosen and stored at creation when omitted",
    )
    max_attempts: int = Field(
        default=3, ge=1, le=100, description="attempts of a run before it ends as failed"
    )
    train_tokens: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="planned tokens of the target run"
    )
    max_epochs: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="repetition cap: a domain's weight <= max_epochs x tokens / train_tokens",
    )


@dataclass(frozen=True)
class Observation:
    """A run as the mixers see it: the mixture, its parameters and its objective (if finished).

    ``metrics``: the run's values of the objective's metrics (those it reported), so that a fit
    can model each metric of a combined objective on its own.
    """

    weights: FloatArray
    params: Mapping[str, Any] = field(default_factory=dict)
    objective: float | None = None
    status: str = "completed"
    excluded: bool = False
    run_id: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Proposal:
    """A mixture a method wants trained."""

    weights: FloatArray
    params: Mapping[str, Any] = field(default_factory=dict)


ConfigT = TypeVar("ConfigT", bound=MethodConfig)


@dataclass(frozen=True)
class RunSummary:
    """What a method may learn of another run of the service (e.g. DoReMi's reference run)."""

    status: str
    eval_losses: Mapping[str, float]
    """The run's latest reported per-domain held-out losses (empty if it reported none)."""


RunLookup = Callable[[str], RunSummary]
"""``run_id -> RunSummary``, given by the service; ``NotFound`` for an unknown run."""


@dataclass(frozen=True)
class ExperimentSetup:
    """What a method may read of the experiment it is created for, to complete its config."""

    direction: Direction
    """The objective's direction."""
    find_run: RunLookup


class Mixer(ABC, Generic[ConfigT]):
    """What every registered method has: a name, a mode, a description and a typed config.

    A subclass names its config class as the type argument (``OfflineMixer[RegMixConfig]``);
    ``Config`` is taken from it, so the class and its config are declared once.
    """

    name: ClassVar[str]
    mode: ClassVar[Mode]
    description: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            for arg in get_args(base):
                if isinstance(arg, type) and issubclass(arg, MethodConfig):
                    cls.Config = arg

    def __init__(self, config: ConfigT) -> None:
        self.config: ConfigT = config

    @classmethod
    def parse_config(cls, raw: Mapping[str, Any]) -> MethodConfig:
        """Validate a config dict into ``Config``; errors are located under ``config``."""
        try:
            return cls.Config.model_validate(dict(raw))
        except ValidationError as exc:
            raise InvalidInput(
                f"invalid config for method {cls.name!r}",
                [ErrorItem(("config", *e["loc"]), e["msg"]) for e in exc.errors()],
            ) from exc

    @classmethod
    def from_config(cls, raw: Mapping[str, Any]) -> Self:
        """The mixer for a raw config dict (``InvalidInput`` under ``config`` if it is bad)."""
        config: Any = cls.parse_config(raw)  # an instance of cls.Config, i.e. of ConfigT
        return cls(config)

    def complete_config(self, setup: ExperimentSetup) -> ConfigT:
        """The config completed from the experiment it is created for (stored with it).

        Called once, at creation; by default the config as given. ``InvalidInput`` when the
        config contradicts the experiment.
        """
        return self.config

    def check_space(self, space: DomainSpace) -> None:
        """Checks that need the domains too (e.g. fixed weights); raise ``InvalidInput``."""
