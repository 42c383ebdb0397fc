"""``curves``: per-domain learning curves with transfer, fitted online, followed within one run.

After every feedback segment the mixer refits, for each domain ``i``, a power law in the data the
run has trained on so far, with transfer from the other domains (as ADO fits a law per domain,
here with the cross-domain terms that make a broad domain worth more than its own loss says)::

    L_i(x) = eps_i + beta_i * (1 + exp(theta_i) * (x_i + sum_{j != i} tau_ij x_j)) ** -alpha_i

``x`` is the exposure: the cumulative allocation (steps' worth of each domain, from the reported
``tokens`` or else the weights played), measured in units of the first segment, with (config
``forgetting``, on by default) each domain's past data fading at a fitted rate ``f_i`` per unit
trained, so that a loss that rises again while its domain is starved (small models on real text
do) is explained by forgetting rather than credited to the data that were trained instead. The
fit is a small maximum-a-posteriori least squares per domain (scipy), pulled towards no
forgetting, a square-root law and, for transfer, towards a level ``g_i`` shared by all the other
domains (learning from any data, whatever the mixture: on real text every loss falls early),
``g_i`` itself pulled towards 0 more weakly. A preference for one domain's data therefore needs
evidence from allocations that varied; warm-started from the previous round's parameters.

The next weights minimise the objective's predicted held-out loss at the end of a horizon,
``sum_i c_i L_i(x + w R)`` (``c`` = ``config.target``, by default every domain equally; ``R`` =
the steps left of ``config.total_steps``, or as many steps again as have been trained when the
length is unknown), subject to:

- a trust region: each weight moves at most ``max_shift`` from the previous target per round, so
  one poor fit cannot swing the mixture to a corner;
- an exploration floor ``floor`` per domain, and the domains' own bounds;
- exploration: the played weights mix ``explore / sqrt(round)`` of a Dirichlet draw (from the seed
  and the round) into the target, so that the allocations vary and transfer is identifiable.

The first ``warmup_rounds`` rounds play the base mixture (uniform, or the prior) with that
exploration. ``recommend`` gives the static mixture the fitted curves predict best over the whole
run's length, for a fresh run.

Config (defaults): ``segment_steps`` 100, ``signal`` "eval", ``target`` null (every domain
equally), ``total_steps`` null, ``base`` "uniform", ``warmup_rounds`` 3, ``max_shift`` 0.2,
``floor`` 0.01, ``explore`` 0.3, ``forgetting`` true, ``transfer_prior`` 0.03 (each transfer
coefficient towards its domain's shared level), ``shared_transfer_prior`` 0.1 (the shared
level towards 0; null: no shared level, every coefficient towards 0 by ``transfer_prior``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator
from scipy.optimize import least_squares, minimize

from mixers.base import DomainSpace, FloatArray, spread_residual
from mixers.online.base import Decision, Feedback, OnlineConfig, OnlineMixer, State, count_round
from mixers.online.odm import clean_losses, play
from mixers.registry import register
from mixopt.errors import ErrorItem, InvalidInput

__all__ = [
    "Curves",
    "CurvesConfig",
    "CurvesMixer",
    "LearningCurve",
    "discounted",
    "fit_curve",
    "plan_weights",
    "transfer_prior_matrix",
]

PRIOR_ALPHA = 0.5
"""The law's exponent before the data say otherwise (a square-root law)."""
MAX_POINTS = 400
"""Feedback rounds kept for the fits; older ones are thinned beyond this."""
MAX_FORGETTING = 2.0
"""The fastest forgetting a law may fit: exposure fading by e^-2 per unit (first segment)."""
FORGETTING_PRIOR = 0.05
"""Strength of the pull of every forgetting rate towards 0 (no forgetting)."""


class CurvesConfig(OnlineConfig):
    segment_steps: int | None = Field(
        default=100, ge=1, description="training steps per round (one feedback and refit each)"
    )
    signal: Literal["eval", "train"] = Field(
        default="eval",
        description="which reported losses the curves are fitted to: held-out eval_losses "
        "(less noisy) or the segment's train_losses",
    )
    target: dict[str, float] | None = Field(
        default=None,
        description="the held-out objective to minimise as weights per domain (normalised), "
        "e.g. only the domains the model is judged on (null: every domain equally)",
    )
    total_steps: int | None = Field(
        default=None,
        ge=1,
        description="the run's planned length in steps; the horizon is what is left of it "
        "(null: plan for as many steps again as have been trained)",
    )
    base: Literal["uniform", "prior"] = Field(
        default="uniform", description="the warm-up mixture: uniform 1/K or the domains' prior"
    )
    warmup_rounds: int = Field(
        default=3, ge=1, description="rounds on the base mixture before the curves steer"
    )
    max_shift: float = Field(
        default=0.2,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="trust region: the most any domain's target weight moves in one round",
    )
    floor: float = Field(
        default=0.01,
        ge=0,
        le=0.5,
        allow_inf_nan=False,
        description="exploration floor: the least weight any domain keeps (within its bounds)",
    )
    explore: float = Field(
        default=0.3,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="share of a random mixture in the played weights, decaying as "
        "explore / sqrt(round); it makes the transfer between domains identifiable",
    )
    transfer_prior: float = Field(
        default=0.03,
        ge=0,
        allow_inf_nan=False,
        description="strength of the pull of each transfer coefficient towards its domain's "
        "shared level: transfer from one domain more than from the others needs evidence",
    )
    forgetting: bool = Field(
        default=True,
        description="fit, per domain, a rate at which its exposure fades (a loss that rises "
        "again while its domain is starved, as small models' do) and plan with it",
    )
    shared_transfer_prior: float | None = Field(
        default=0.1,
        ge=0,
        allow_inf_nan=False,
        description="strength of the pull of each domain's shared transfer level (learning from "
        "any data, whatever the mixture) towards 0 (null: no shared level, every transfer "
        "coefficient is pulled towards 0 by transfer_prior)",
    )

    @field_validator("target")
    @classmethod
    def _positive_target(cls, target: dict[str, float] | None) -> dict[str, float] | None:
        if target is None:
            return None
        if any(not math.isfinite(v) or v < 0 for v in target.values()):
            raise ValueError("target weights must be finite and >= 0")
        if sum(target.values()) <= 0:
            raise ValueError("target weights must not all be 0")
        return target


class LearningCurve:
    """One domain's fitted law: ``params`` = (eps, log beta, log alpha, theta, tau...[,
    forgetting]), the last only when the law was fitted with forgetting."""

    def __init__(self, index: int, params: Sequence[float]) -> None:
        self.index = index
        self.params = np.asarray(params, dtype=float)

    def effective(self, x: FloatArray) -> FloatArray:
        """The data that count for this domain: its own plus the transferred share, of
        exposures ``x`` (cumulative allocations, or ``discounted`` ones with forgetting)."""
        x = np.asarray(x, dtype=float)
        k = x.shape[-1]
        tau = np.insert(self.params[4 : k + 3], self.index, 1.0)
        out: FloatArray = x @ tau
        return out

    def __call__(self, x: FloatArray) -> FloatArray:
        eps, log_beta, log_alpha, theta = self.params[:4]
        e = np.maximum(self.effective(x), 0.0)
        out: FloatArray = eps + np.exp(log_beta) * (1.0 + np.exp(theta) * e) ** -np.exp(log_alpha)
        return out


def discounted(x: FloatArray, forgetting: float) -> FloatArray:
    """The exposure that still counts at each round when data are forgotten at rate
    ``forgetting`` per unit trained: row ``n`` is ``sum_{s <= n} exp(-forgetting (X_n - X_s))
    dx_s`` for cumulative allocations ``x`` (n x K), ``dx_s`` their increments and ``X`` the
    total trained. At rate 0 it is ``x`` itself."""
    out, _ = _discounted_and_slope(x, forgetting)
    return out


def _discounted_and_slope(x: FloatArray, forgetting: float) -> tuple[FloatArray, FloatArray]:
    """``discounted(x, forgetting)`` and its derivative in ``forgetting``."""
    increments = np.diff(x, axis=0, prepend=np.zeros((1, x.shape[1])))
    total = x.sum(axis=1)
    age = np.tril(total[:, None] - total[None, :])
    decay = np.tril(np.exp(-forgetting * age))
    out: FloatArray = decay @ increments
    slope: FloatArray = -(decay * age) @ increments
    return out, slope


def fit_curve(
    index: int,
    x: FloatArray,
    y: FloatArray,
    start: Sequence[float] | None,
    transfer_prior: float,
    shared_transfer_prior: float | None = None,
    forgetting: bool = False,
) -> LearningCurve:
    """The MAP fit of domain ``index``'s law to cumulative allocations ``x`` (n x K) and its
    losses ``y``; with ``forgetting`` the law also fits the rate at which its exposure fades."""
    n, k = x.shape
    size = k + 4 if forgetting else k + 3
    transfer_residuals = transfer_prior_matrix(k - 1, transfer_prior, shared_transfer_prior)
    low_y, high_y = float(y.min()), float(y.max())
    spread = max(high_y - low_y, 1e-3 * max(abs(high_y), 1.0))
    if start is None or len(start) not in (k + 3, k + 4):
        start = [0.5 * low_y, math.log(max(high_y - 0.5 * low_y, 1e-3) * 2.0), math.log(0.5), 0.0]
        start = [*start, *([0.0] * (k - 1))]
    start = [*list(start)[: k + 3], *([0.0] if len(start) < size else list(start)[k + 3 :])]
    start = start[:size]
    lower = [0.0, math.log(1e-6), math.log(0.05), -8.0, *([0.0] * (k - 1))]
    upper = [max(low_y, 1e-9), math.log(100.0 * max(high_y, 1e-3)), math.log(3.0), 8.0]
    upper += [2.0] * (k - 1)
    if forgetting:
        lower, upper = [*lower, 0.0], [*upper, MAX_FORGETTING]
    x0 = np.clip(np.asarray(start, dtype=float), np.array(lower) + 1e-12, np.array(upper) - 1e-12)
    # Priors as extra residuals, in units of the losses' spread: weak on the curve's shape,
    # firmer on transfer (it needs varied allocations to be seen; absent evidence, none) and
    # on forgetting (a loss that never rises when its domain is starved shows none).
    shape_weight = 0.05 / math.sqrt(n)
    rows = n + 2 + (k - 1) + (1 if forgetting else 0)

    def exposure(p: FloatArray) -> tuple[FloatArray, FloatArray]:
        tau = np.insert(p[4 : k + 3], index, 1.0)
        if not forgetting:
            return x @ tau, np.zeros(n)
        kept, slope = _discounted_and_slope(x, float(p[k + 3]))
        return kept @ tau, slope @ tau

    def residuals(p: FloatArray) -> FloatArray:
        e = np.maximum(exposure(p)[0], 0.0)
        fitted = p[0] + math.exp(p[1]) * (1.0 + math.exp(p[3]) * e) ** -math.exp(p[2])
        data = (fitted - y) / spread
        priors = [shape_weight * (p[2] - math.log(PRIOR_ALPHA)), shape_weight * p[3] / 4.0]
        parts = [data, priors, transfer_residuals @ p[4 : k + 3]]
        if forgetting:
            parts.append([FORGETTING_PRIOR * p[k + 3]])
        out: FloatArray = np.concatenate(parts)
        return out

    def jacobian(p: FloatArray) -> FloatArray:
        # d/d(eps, log beta, log alpha, theta, tau, forgetting) of eps + beta u^-alpha,
        # u = 1 + e^theta E.
        alpha, scale = math.exp(p[2]), math.exp(p[3])
        raw, d_forgetting = exposure(p)
        e = np.maximum(raw, 0.0)
        u = 1.0 + scale * e
        f = math.exp(p[1]) * u**-alpha
        slope = -alpha * f * scale / u
        kept = discounted(x, float(p[k + 3])) if forgetting else x
        jac = np.zeros((rows, size))
        jac[:n, 0] = 1.0
        jac[:n, 1] = f
        jac[:n, 2] = -alpha * f * np.log(u)
        jac[:n, 3] = slope * e
        jac[:n, 4 : k + 3] = slope[:, None] * np.delete(kept, index, axis=1)
        if forgetting:
            jac[:n, k + 3] = slope * d_forgetting
            jac[rows - 1, k + 3] = FORGETTING_PRIOR
        jac[:n] /= spread
        jac[n, 2] = shape_weight
        jac[n + 1, 3] = shape_weight / 4.0
        jac[n + 2 : n + 2 + k - 1, 4 : k + 3] = transfer_residuals
        return jac

    result = least_squares(
        residuals,
        x0,
        jac=jacobian,
        bounds=(lower, upper),
        loss="linear",
        f_scale=0.05,
        max_nfev=100,
        ftol=1e-6,
        xtol=1e-6,
        gtol=1e-6,
    )
    return LearningCurve(index, result.x)


def transfer_prior_matrix(m: int, specific: float, shared: float | None) -> FloatArray:
    """``R`` such that ``|R tau|^2`` is the prior's penalty on one domain's ``m`` transfer
    coefficients ``tau``.

    Without a shared level it is ``specific^2 |tau|^2``. With one, each ``tau_j`` is pulled
    towards a level ``g`` (``specific^2 sum_j (tau_j - g)^2``) and ``g`` towards 0
    (``shared^2 g^2``), ``g`` minimised out in closed form: learning that every domain's data
    brings alike costs little, a preference for one domain's data costs ``specific``.
    """
    if shared is None or m == 0:
        out: FloatArray = np.eye(m) * specific
        return out
    a, b = specific**2, shared**2
    if a + b == 0:
        return np.zeros((m, m))
    # The penalty's matrix a I - a^2 / (a m + b) 11^T has eigenvalue a off the all-ones
    # direction and a b / (a m + b) along it: its square root, as a matrix.
    along = math.sqrt(b / (a * m + b))
    root: FloatArray = specific * (np.eye(m) - (1.0 - along) * np.ones((m, m)) / m)
    return root


class Curves:
    """Every domain's law at once: ``losses(x)`` and the target's loss after a planned stretch."""

    def __init__(self, curves: Sequence[LearningCurve]) -> None:
        k = len(curves)
        params = np.array([c.params[: k + 3] for c in curves], dtype=float)
        self.eps = params[:, 0]
        self.beta = np.exp(params[:, 1])
        self.alpha = np.exp(params[:, 2])
        self.scale = np.exp(params[:, 3])
        self.forgetting = np.array(
            [float(c.params[k + 3]) if len(c.params) > k + 3 else 0.0 for c in curves]
        )
        self.transfer = np.eye(k)
        for i in range(k):
            self.transfer[i, np.arange(k) != i] = params[i, 4:]

    def losses(self, x: FloatArray) -> FloatArray:
        """Each domain's loss at cumulative allocations ``x``, forgetting aside."""
        u = 1.0 + self.scale * np.maximum(self.transfer @ x, 0.0)
        out: FloatArray = self.eps + self.beta * u**-self.alpha
        return out

    def planned_loss(
        self, c: FloatArray, kept: FloatArray, w: FloatArray, horizon: float
    ) -> tuple[float, FloatArray]:
        """``sum_i c_i L_i`` after ``horizon`` more units on weights ``w``, and its gradient in
        ``w``. ``kept``: the exposures that count now, one row per domain (its own discounted
        allocations) or one row for all; while a domain trains on, what it had fades at its
        forgetting rate and the new data fade too (``(1 - e^-fR) / f`` units of each)."""
        fade = self.forgetting * horizon
        decay = np.exp(-fade)
        gain = np.where(
            fade > 1e-9, -np.expm1(-fade) / np.maximum(self.forgetting, 1e-300), horizon
        )
        exposure = np.atleast_2d(kept) * decay[:, None] + gain[:, None] * w[None, :]
        u = 1.0 + self.scale * np.maximum(np.sum(self.transfer * exposure, axis=1), 0.0)
        f = self.beta * u**-self.alpha
        d_effective = -self.alpha * f * self.scale / u
        gradient: FloatArray = self.transfer.T @ (c * d_effective * gain)
        return float(c @ (self.eps + f)), gradient


def plan_weights(
    curves: Curves,
    target: FloatArray,
    allocated: FloatArray,
    horizon: float,
    lower: FloatArray,
    upper: FloatArray,
    start: FloatArray,
) -> FloatArray:
    """The weights within ``[lower, upper]`` (summing to 1) that minimise the target loss the
    curves predict after ``horizon`` more units on top of ``allocated`` (the exposures that
    count now: a K-vector, or one row per domain, see ``Curves.planned_loss``)."""

    def objective(w: FloatArray) -> tuple[float, FloatArray]:
        return curves.planned_loss(target, allocated, w, horizon)

    w0 = np.clip(start, lower, upper)
    w0 = w0 / w0.sum() if w0.sum() > 0 else np.full(len(w0), 1.0 / len(w0))
    result = minimize(
        objective,
        w0,
        jac=True,
        method="SLSQP",
        bounds=list(zip(lower, upper, strict=True)),
        constraints=[{"type": "eq", "fun": lambda w: float(np.sum(w) - 1.0), "jac": np.ones_like}],
        options={"maxiter": 100, "ftol": 1e-10},
    )
    w = np.clip(np.asarray(result.x, dtype=float), lower, upper)
    if not np.all(np.isfinite(w)) or w.sum() <= 0:
        return w0
    w = spread_residual(w, lower, upper)  # SLSQP's sum is 1 within ~1e-5
    # No predicted gain worth the move (a flat or unidentified model): stay where we are.
    if objective(w)[0] > objective(w0)[0] - 1e-6 * abs(objective(w0)[0]):
        return w0
    out: FloatArray = w
    return out


@register
class CurvesMixer(OnlineMixer[CurvesConfig]):
    name: ClassVar[str] = "curves"
    description: ClassVar[str] = (
        "Fits each domain's held-out loss as a power law in the data trained so far, with "
        "transfer from the other domains, after every feedback; trains on the mixture the "
        "curves predict best for the rest of the run (trust region, exploration floor, "
        "decaying random exploration). Needs eval_losses (or train_losses with signal "
        "'train') for every domain."
    )

    def check_space(self, space: DomainSpace) -> None:
        target = self.config.target
        if target is None:
            return
        errors = [
            ErrorItem(("config", "target", key), f"unknown domain {key!r}")
            for key in target
            if key not in space.names
        ]
        if errors:
            raise InvalidInput("the target names domains the experiment does not have", errors)

    def check_feedback(self, space: DomainSpace, feedback: Feedback) -> None:
        field = "eval_losses" if self.config.signal == "eval" else "train_losses"
        reported = feedback.eval_losses if self.config.signal == "eval" else feedback.train_losses
        missing = [name for name in space.names if name not in reported]
        if missing:
            raise InvalidInput.at(
                (field,),
                f"curves fits every domain's {field}; missing: {', '.join(missing)}",
            )
        super().check_feedback(space, feedback)

    # --- the state ---

    def init_state(self, space: DomainSpace, seed: int) -> State:
        base = self._base(space)
        return {
            "rounds": 0,
            "tokens": {},
            "seed": int(seed),
            "step": 0,
            "unit": None,
            "allocated": [0.0] * space.k,
            "points": [],
            "params": None,
            "target": [float(w) for w in base],
            "played": [float(w) for w in self._explored(space, base, int(seed), 0)],
        }

    def _base(self, space: DomainSpace) -> FloatArray:
        if self.config.base == "prior":
            return play(space, np.asarray(space.prior, dtype=float))
        return play(space, np.full(space.k, 1.0 / space.k))

    def _objective(self, space: DomainSpace) -> FloatArray:
        target = self.config.target
        c = np.array([1.0 if target is None else float(target.get(n, 0.0)) for n in space.names])
        out: FloatArray = c / c.sum()
        return out

    def _bounds(self, space: DomainSpace) -> tuple[FloatArray, FloatArray]:
        upper = np.asarray(space.upper, dtype=float)
        lower = np.maximum(
            np.asarray(space.lower, dtype=float), np.minimum(self.config.floor, upper)
        )
        if lower.sum() > 1.0:  # floors that cannot all be kept: the declared bounds win
            lower = np.asarray(space.lower, dtype=float)
        return lower, upper

    def _explored(
        self, space: DomainSpace, target: FloatArray, seed: int, round_: int
    ) -> FloatArray:
        share = self.config.explore / math.sqrt(1.0 + round_)
        if share <= 0 or space.k < 2:
            return target
        rng = np.random.default_rng([seed % 2**63, round_, 7])
        mixed = (1.0 - share) * target + share * rng.dirichlet(np.ones(space.k))
        lower, upper = self._bounds(space)
        out: FloatArray = space.project(np.clip(mixed, lower, upper))[0]
        return out

    def decide(self, space: DomainSpace, state: State) -> Decision:
        rounds = int(state.get("rounds", 0))
        phase = "warmup" if rounds < self.config.warmup_rounds else "exploit"
        played = np.asarray(state.get("played") or self._base(space), dtype=float)
        if played.shape != (space.k,):
            played = self._base(space)
        return Decision(space.project(played)[0], self.config.segment_steps, phase)

    def observe(self, space: DomainSpace, state: State, feedback: Feedback) -> State:
        config = self.config
        new = count_round(state, feedback)
        reported = feedback.eval_losses if config.signal == "eval" else feedback.train_losses
        losses = clean_losses(space, reported)
        step = int(feedback.step)
        steps = max(step - int(state.get("step", 0)), 0)
        played = np.asarray(state.get("played") or self._base(space), dtype=float)
        segment = _segment_allocation(space, feedback.tokens, played, steps)
        unit = state.get("unit") or (float(segment.sum()) if segment.sum() > 0 else None)
        allocated = np.asarray(state.get("allocated", [0.0] * space.k), dtype=float)
        if unit:
            allocated = allocated + segment / float(unit)
        points = list(state.get("points", []))
        if len(losses) == space.k and unit:
            points.append([*map(float, allocated), *(losses[n] for n in space.names)])
        points = _thinned(points)
        new.update(step=step, unit=unit, allocated=[float(v) for v in allocated], points=points)
        target = np.asarray(state.get("target") or self._base(space), dtype=float)
        rounds = int(new["rounds"])
        if rounds >= config.warmup_rounds and len(points) >= 2:
            fitted = self._fit(space, points, state.get("params"))
            new["params"] = [[float(v) for v in c.params] for c in fitted]
            curves = Curves(fitted)
            horizon = self._horizon(step, unit)
            lower, upper = self._bounds(space)
            lo = np.maximum(lower, target - config.max_shift)
            hi = np.minimum(upper, target + config.max_shift)
            kept = _kept_exposures(points, allocated, curves.forgetting)
            target = plan_weights(curves, self._objective(space), kept, horizon, lo, hi, target)
        new["target"] = [float(w) for w in target]
        new["played"] = [
            float(w) for w in self._explored(space, target, int(state.get("seed", 0)), rounds)
        ]
        return new

    def _horizon(self, step: int, unit: float | None) -> float:
        if not unit:
            return 1.0
        total = self.config.total_steps
        left = (total - step) if total is not None else step
        return max(float(left), float(self.config.segment_steps or 1)) / float(unit)

    def _fit(
        self, space: DomainSpace, points: list[list[float]], params: Any
    ) -> list[LearningCurve]:
        data = np.asarray(points, dtype=float)
        k = space.k
        x, y = data[:, :k], data[:, k:]
        starts = params if isinstance(params, list) and len(params) == k else [None] * k
        return [
            fit_curve(
                i,
                x,
                y[:, i],
                starts[i],
                self.config.transfer_prior,
                self.config.shared_transfer_prior,
                self.config.forgetting,
            )
            for i in range(k)
        ]

    def recommend(self, space: DomainSpace, state: State) -> FloatArray:
        """The static mixture the fitted curves predict best over the run's whole length."""
        params = state.get("params")
        unit = state.get("unit")
        if not isinstance(params, list) or len(params) != space.k or not unit:
            return np.asarray(state.get("target") or self._base(space), dtype=float)
        curves = Curves([LearningCurve(i, p) for i, p in enumerate(params)])
        length = self.config.total_steps or int(state.get("step", 0))
        lower, upper = self._bounds(space)
        start = np.asarray(state.get("target") or self._base(space), dtype=float)
        return plan_weights(
            curves,
            self._objective(space),
            np.zeros(space.k),
            max(float(length), 1.0) / float(unit),
            lower,
            upper,
            start,
        )


def _segment_allocation(
    space: DomainSpace, tokens: Mapping[str, int], played: FloatArray, steps: int
) -> FloatArray:
    """Steps' worth of each domain in the segment: the realised token shares when reported for
    every domain, else the weights that were played."""
    counts = np.array([float(tokens.get(n, -1)) for n in space.names])
    if steps > 0 and np.all(counts >= 0) and counts.sum() > 0:
        out: FloatArray = counts / counts.sum() * steps
        return out
    weights = played / played.sum() if played.sum() > 0 else np.full(space.k, 1.0 / space.k)
    result: FloatArray = weights * float(steps)
    return result


def _kept_exposures(
    points: list[list[float]], allocated: FloatArray, forgetting: FloatArray
) -> FloatArray:
    """Row ``i``: the allocations that still count now for domain ``i`` at its forgetting rate."""
    k = len(allocated)
    x = np.vstack([np.asarray(points, dtype=float)[:, :k], allocated[None, :]])
    rows = [discounted(x, float(rate))[-1] if rate > 0 else allocated for rate in forgetting]
    out: FloatArray = np.asarray(rows, dtype=float)
    return out


def _thinned(points: list[list[float]]) -> list[list[float]]:
    """At most ``MAX_POINTS`` rounds: beyond that, every other point of the older half goes."""
    if len(points) <= MAX_POINTS:
        return points
    half = len(points) // 2
    return points[:half:2] + points[half:]
