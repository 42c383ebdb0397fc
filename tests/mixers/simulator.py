# ruff: noqa: N806 - X is the conventional name of a design matrix (scikit-learn)
"""A toy proxy trainer for the offline mixers: a Data-Mixing-Law loss with a known optimum.

Hidden truth, not told to the mixers (the Data Mixing Laws of Ye et al., ICLR 2025):

* The objective is the weighted validation loss over the *target* domains (every domain but
  the harmful one): ``L(w) = sum_i v_i (c_i + k_i exp(t_i . w))``, a sum of exponentials over the
  mixture ``w``, one term per target domain (``v``: the targets' importance).
* ``t_ii < 0``: training on a domain helps its own validation loss (own-domain gain, 1.5 to 4).
  Domain ``USEFUL`` helps every target (``t_iu`` in -1.5 to -0.8), like a broad high-quality
  source. Domain ``HARMFUL`` (index 0, the largest token prior, like a noisy crawl) hurts every
  target (``t_ih`` in 0.3 to 0.8). The other cross terms are small (-0.4 to 0.2).
* A run's observed objective is ``L(w) (1 + 0.003 e)`` with ``e`` standard normal: 0.3 %
  multiplicative noise, about the seed-to-seed spread of a small proxy's validation loss.
* The space is unbounded (min 0, max 1, no caps) with a skewed token prior (the harmful domain
  holds the most tokens), so the uniform mixture, the reference point of the gap closure, is a
  valid mixture.

``gap_closure(w) = (L(uniform) - L(w)) / (L(uniform) - L(optimum))``, noiseless; the optimum is
found by SLSQP on the simplex from many starts.

Two more hidden laws share the construction (``LawSimulator``: the space, the noise, the optimum,
the gap closure): ``PowerLawSimulator``, a power law in each target's effective share of data
(scaling-law style, log-linear in the share), and ``SaturatingSimulator``, own-domain gains that
saturate plus pairwise interactions (redundant and complementary domains). ``make_law`` builds
any of them by name (``LAWS``), for the tests and ``bench/methods_offline.py``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize
from scipy.stats import spearmanr

from mixers.base import DomainSpace, Observation
from mixers.fitting import Usable, fit_model
from mixers.offline.base import OfflineMixer
from mixers.recommendation import recommend

FloatArray = NDArray[np.float64]
NOISE = 0.003
HARMFUL = 0
USEFUL = 1
USEFUL_TOKENS = 0.3
HARMFUL_TOKENS = 3.0


@dataclass(frozen=True, eq=False)
class LawSimulator(ABC):
    """A hidden loss over mixtures of ``k`` domains with a known optimum on the simplex."""

    k: int
    tokens: FloatArray  # the token counts: the space's prior

    @abstractmethod
    def loss(self, w: FloatArray) -> FloatArray:
        """The noiseless objective of each row of ``w``."""

    def _gradient(self, w: FloatArray) -> FloatArray | None:
        """The gradient of the loss at one mixture, where known (else finite differences)."""
        return None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f"d{i:02d}" for i in range(self.k))

    def space(self) -> DomainSpace:
        return DomainSpace.from_domains(
            [{"name": n, "tokens": float(t)} for n, t in zip(self.names, self.tokens, strict=True)]
        )

    def observe(self, w: FloatArray, rng: np.random.Generator, noise: float = NOISE) -> FloatArray:
        """What a proxy run reports: the loss with ``noise`` (default 0.3 %) multiplicative
        noise."""
        value = self.loss(w)
        return value * (1.0 + noise * rng.standard_normal(len(value)))

    @cached_property
    def optimum(self) -> tuple[FloatArray, float]:
        """The best mixture and its loss: SLSQP on the simplex from 64 starts."""
        rng = np.random.default_rng(12345)
        starts = np.vstack(
            [np.full(self.k, 1.0 / self.k), np.eye(self.k), rng.dirichlet(np.ones(self.k), 64)]
        )
        best_w, best = starts[0], float(self.loss(starts[0])[0])
        constraint = {
            "type": "eq",
            "fun": lambda w: w.sum() - 1.0,
            "jac": lambda w: np.ones_like(w),
        }
        for x0 in starts:
            res = minimize(
                lambda w: float(self.loss(w)[0]),
                x0,
                jac=None if self._gradient(x0) is None else self._gradient,
                method="SLSQP",
                bounds=[(0.0, 1.0)] * self.k,
                constraints=[constraint],
                options={"maxiter": 500, "ftol": 1e-12},
            )
            w = np.clip(res.x, 0.0, None)
            w /= w.sum()
            value = float(self.loss(w)[0])
            if value < best:
                best_w, best = w, value
        return best_w, best

    @property
    def uniform_loss(self) -> float:
        return float(self.loss(np.full(self.k, 1.0 / self.k))[0])

    def gap_closure(self, w: FloatArray) -> float:
        """``(L(uniform) - L(w)) / (L(uniform) - L(optimum))``: 1 at the optimum, 0 at uniform."""
        return (self.uniform_loss - float(self.loss(w)[0])) / (self.uniform_loss - self.optimum[1])

    def global_spearman(
        self, predict: Callable[[FloatArray], Any], count: int = 2000, seed: int = 0
    ) -> float:
        """How well ``predict`` ranks mixtures over the whole simplex: the Spearman between its
        values and the noiseless loss at ``count`` uniform Dirichlet mixtures."""
        points = np.random.default_rng([self.k, seed]).dirichlet(np.ones(self.k), count)
        predicted = np.asarray(predict(points), dtype=float).ravel()
        return float(spearmanr(predicted, self.loss(points)).statistic)


@dataclass(frozen=True, eq=False)
class MixingLawSimulator(LawSimulator):
    """``L(w) = sum_i v_i (c_i + k_i exp(t_i . w))`` over the target domains ``i``."""

    targets: NDArray[np.intp]  # the target (validation) domains, one term each
    v: FloatArray  # importance of each target, summing to 1
    c: FloatArray
    scale: FloatArray
    t: FloatArray  # (targets, k)

    def loss(self, w: FloatArray) -> FloatArray:
        w = np.atleast_2d(w)
        terms = self.c + self.scale * np.exp(w @ self.t.T)
        return np.asarray(terms @ self.v, dtype=float)

    def _gradient(self, w: FloatArray) -> FloatArray:
        e = self.scale * np.exp(self.t @ w)
        return np.asarray((self.v * e) @ self.t, dtype=float)


@dataclass(frozen=True, eq=False)
class PowerLawSimulator(LawSimulator):
    """``L(w) = sum_i v_i (c_i + k_i (eps + a_i . w)^(-alpha_i) + h_i w_harmful)``.

    ``a_i . w`` is target ``i``'s effective share of data: its own domain counts fully, the
    useful one a quarter, the others 0 to 0.2, the harmful one not at all (which costs ``h_i`` per
    unit weight instead). A power law in that share: log-linear in ``log(eps + a_i . w)``, with
    diminishing returns, unlike the exponential law's constant rate.
    """

    v: FloatArray
    c: FloatArray
    scale: FloatArray
    a: FloatArray  # (targets, k) transfer to each target
    alpha: FloatArray
    h: FloatArray
    eps: float = 0.02

    def loss(self, w: FloatArray) -> FloatArray:
        w = np.atleast_2d(w)
        share = self.eps + w @ self.a.T
        terms = self.c + self.scale * share ** (-self.alpha) + np.outer(w[:, HARMFUL], self.h)
        return np.asarray(terms @ self.v, dtype=float)

    def _gradient(self, w: FloatArray) -> FloatArray:
        share = self.eps + self.a @ w
        slope = -self.v * self.alpha * self.scale * share ** (-self.alpha - 1.0)
        grad = slope @ self.a
        grad[HARMFUL] += float(self.v @ self.h)
        return np.asarray(grad, dtype=float)


@dataclass(frozen=True, eq=False)
class SaturatingSimulator(LawSimulator):
    """``L(w) = sum_i v_i (c_i + k_i / (1 + g_i a_i . w)) + w' Q w``.

    Gains that saturate (hyperbolically) in each target's effective share ``a_i . w``, plus
    pairwise interactions ``Q``: pairs of redundant domains (``Q > 0``: training on both helps
    less than the sum) and complementary ones (``Q < 0``); the harmful domain's row adds a cost
    with every other domain, and the diagonal one for repeating a domain.
    """

    v: FloatArray
    c: FloatArray
    scale: FloatArray
    a: FloatArray
    g: FloatArray
    q: FloatArray  # (k, k) symmetric

    def loss(self, w: FloatArray) -> FloatArray:
        w = np.atleast_2d(w)
        terms = self.c + self.scale / (1.0 + self.g * (w @ self.a.T))
        pairs = np.einsum("ni,ij,nj->n", w, self.q, w)
        return np.asarray(terms @ self.v + pairs, dtype=float)

    def _gradient(self, w: FloatArray) -> FloatArray:
        slope = -self.v * self.scale * self.g / (1.0 + self.g * (self.a @ w)) ** 2
        return np.asarray(slope @ self.a + 2.0 * self.q @ w, dtype=float)


@cache
def make_simulator(k: int, seed: int = 0) -> MixingLawSimulator:
    """A random instance with ``k`` domains; the same ``(k, seed)`` gives the same instance
    (cached: its optimum is computed once)."""
    rng = np.random.default_rng([k, seed])
    tokens, targets, v, c, scale = _tokens_and_targets(k, rng)
    n = len(targets)
    t = rng.uniform(-0.4, 0.2, (n, k)) * (rng.random((n, k)) < 0.5)
    t[np.arange(n), targets] = -rng.uniform(3.0, 8.0, n)  # own-domain gains
    t[targets != USEFUL, USEFUL] = -rng.uniform(0.5, 1.0, n - 1)
    t[:, HARMFUL] = rng.uniform(0.3, 0.8, n)
    return MixingLawSimulator(k, tokens, targets, v, c, scale, t)


def _tokens_and_targets(
    k: int, rng: np.random.Generator
) -> tuple[FloatArray, NDArray[np.intp], FloatArray, FloatArray, FloatArray]:
    """The token prior, the targets (every domain but the harmful one), their importance ``v``
    (summing to 1), floors ``c`` and scales, drawn in this order from ``rng``.

    Skewed token prior: the harmful domain (a noisy crawl) holds the most tokens, three times
    the most of any other; the useful one 0.3, the others span 2.5 decades up to 1. A design
    centred on the prior spends much of its budget on the harmful domain and little near the
    optimum: RegMix's one-shot design with LightGBM closes about half the gap.
    """
    if k < 3:
        raise ValueError("the simulator needs a harmful, a useful and a target domain")
    tokens = 10.0 ** rng.uniform(-2.5, 0.0, k)
    tokens[USEFUL], tokens[HARMFUL] = USEFUL_TOKENS, HARMFUL_TOKENS
    targets = np.array([i for i in range(k) if i != HARMFUL])
    n = len(targets)
    v = rng.dirichlet(np.full(n, 2.0))
    c = rng.uniform(1.5, 3.0, n)
    return tokens, targets, v, c, rng.uniform(0.5, 1.5, n)


def _transfer(k: int, targets: NDArray[np.intp], rng: np.random.Generator) -> FloatArray:
    """Each target's effective share per unit weight of each domain: itself 1, the useful
    domain 0.25, the harmful one 0, the others 0 to 0.2 (half of them 0)."""
    n = len(targets)
    a = rng.uniform(0.0, 0.2, (n, k)) * (rng.random((n, k)) < 0.5)
    a[:, USEFUL] = 0.25
    a[np.arange(n), targets] = 1.0
    a[:, HARMFUL] = 0.0
    return a


@cache
def make_power_law(k: int, seed: int = 0) -> PowerLawSimulator:
    """A random power-law instance (``PowerLawSimulator``); cached like ``make_simulator``."""
    rng = np.random.default_rng([k, seed, 1])
    tokens, targets, v, c, scale = _tokens_and_targets(k, rng)
    a = _transfer(k, targets, rng)
    alpha = rng.uniform(0.2, 0.6, len(targets))
    h = rng.uniform(0.3, 0.8, len(targets)) * scale
    return PowerLawSimulator(k, tokens, v, c, scale * 0.3, a, alpha, h)


@cache
def make_saturating(k: int, seed: int = 0) -> SaturatingSimulator:
    """A random saturation-and-interactions instance (``SaturatingSimulator``); cached."""
    rng = np.random.default_rng([k, seed, 2])
    tokens, targets, v, c, scale = _tokens_and_targets(k, rng)
    a = _transfer(k, targets, rng)
    g = rng.uniform(5.0, 30.0, len(targets))
    q = rng.uniform(-0.3, 0.6, (k, k)) * (rng.random((k, k)) < 0.3)
    q[HARMFUL, :] = rng.uniform(0.3, 0.8, k)
    q = (q + q.T) / 2
    np.fill_diagonal(q, rng.uniform(0.2, 0.5, k))  # repeating one domain: diminishing returns
    return SaturatingSimulator(k, tokens, v, c, scale, a, g, q)


LAWS: dict[str, Callable[[int, int], LawSimulator]] = {
    "exponential": make_simulator,
    "power": make_power_law,
    "saturating": make_saturating,
}
"""The hidden laws by name: ``(k, seed) -> simulator``."""


def make_law(law: str, k: int, seed: int = 0) -> LawSimulator:
    """The ``law`` instance with ``k`` domains (``LAWS``); ``KeyError`` for an unknown law."""
    return LAWS[law](k, seed)


# --- running a method ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    weights: FloatArray  # every run's mixture, in order
    observed: FloatArray  # every run's noisy objective
    recommended: FloatArray
    model: str
    gap_closure: float  # of the recommendation
    best_run_gap_closure: float  # of the run with the best observed objective
    propose_seconds: float  # in the mixer's propose calls, all batches


def propose_and_observe(
    sim: LawSimulator,
    mixer: OfflineMixer[Any],
    seed: int,
    *,
    batches: Sequence[int] = (32, 32, 32, 32),
    noise: float = NOISE,
) -> tuple[list[Observation], float]:
    """Propose ``batches`` one after another, each observed (with ``noise``) before the next:
    every run in order, and the seconds spent in the mixer's propose calls."""
    space = sim.space()
    rng = np.random.default_rng(seed)
    history: list[Observation] = []
    seconds = 0.0
    for count in batches:
        # Seeded as the service does: by the experiment's seed and the number of runs so far.
        started = time.perf_counter()
        proposals = mixer.propose(
            space, history, count, np.random.default_rng([seed, len(history)])
        )
        seconds += time.perf_counter() - started
        w = np.array([p.weights for p in proposals]).reshape(-1, space.k)
        y = sim.observe(w, rng, noise)
        history += [
            Observation(weights=row, objective=float(v)) for row, v in zip(w, y, strict=True)
        ]
    return history, seconds


def run_method(
    sim: LawSimulator,
    mixer: OfflineMixer[Any],
    seed: int,
    *,
    batches: Sequence[int] = (32, 32, 32, 32),
    model: str = "auto",
    candidates: int = 100_000,
    noise: float = NOISE,
) -> Outcome:
    """Propose ``batches`` one after another (each observed before the next), then fit ``model``
    on every run and recommend with ``mixers.fitting`` (as ``POST /fit`` does: the best run
    competes with the searched mixture)."""
    space = sim.space()
    history, seconds = propose_and_observe(sim, mixer, seed, batches=batches, noise=noise)
    X = np.array([obs.weights for obs in history])
    y = np.array([obs.objective for obs in history], dtype=float)
    ids = [str(i) for i in range(len(y))]
    result = fit_model(X, y, ids, model=model, names=space.names, seed=seed)
    runs = Usable(observations=tuple(history), X=X, y=y, run_ids=tuple(ids))
    rec = recommend(
        space,
        result,
        np.random.default_rng([seed, len(y)]),
        candidates=candidates,
        runs=runs,
        contest=mixer.best_run_competes(len(y)),
    )
    best = rec.weights
    return Outcome(
        weights=X,
        observed=y,
        recommended=best,
        model=result.model,
        gap_closure=sim.gap_closure(best),
        best_run_gap_closure=sim.gap_closure(X[int(np.argmin(y))]),
        propose_seconds=seconds,
    )
