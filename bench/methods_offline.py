# ruff: noqa: N806 - X is the conventional name of a design matrix
"""Offline methods on hidden laws and on the RegMix swarm (a section of ``bench/methods.py``).

Simulators (``tests/mixers/simulator.py``): three hidden laws (the Data Mixing Laws exponential,
a power law in each target's effective data share, saturating gains with pairwise interactions),
each with K domains, multiplicative run noise and several seeds. Every offline method that
designs plain mixtures (``regmix``, ``rounds``, ``bayes``, default configs; ``fixed`` takes its
mixture from the user and ``quadmix`` adds sampling parameters) proposes 128 runs in batches of
32; after 64 and after 128 runs each model is fitted to the runs so far and its recommendation
searched as ``POST /fit`` does (``search_candidates`` at ``SEARCH_SECONDS``). Per method, model
and size: the gap closed by the recommendation (``gap_closure``: 0 at the uniform mixture, 1 at
the optimum), mean and minimum over the scenarios, with the searched mixture's and the best
observed run's (they compete, ``recommend``'s ``runs``: how often the run won), and the model's
global Spearman (its ranking of 2000 uniform Dirichlet mixtures against the noiseless law).

RegMix swarm (``../shared/data/regmix``, 512 runs, no known optimum): ``mixers.backtest`` replays
it at 64 and 128 runs (the first runs as stored, and random subsets), and reports each model's
regret against a LightGBM fit on all 512 runs, and its Spearman on the 256 held-out mixtures.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mixers.backtest import BacktestPlan, backtest
from mixers.base import DomainSpace, Observation
from mixers.fitting import Usable, fit_model
from mixers.recommendation import SEARCH_SECONDS, recommend
from mixers.registry import offline_method
from tests.mixers.simulator import LAWS, make_law, propose_and_observe
from tests.regmix_data import regmix_splits

__all__ = [
    "OFFLINE_METHODS",
    "OfflineRow",
    "print_offline_table",
    "print_regmix_backtest",
    "run_section",
    "simulated_rows",
]

OFFLINE_METHODS = ("regmix", "rounds", "bayes")
SIZES = (64, 128)


@dataclass(frozen=True)
class OfflineRow:
    """One method, model and size over the scenarios (law x K x noise x seed)."""

    method: str
    model: str
    n_runs: int
    scenarios: int
    gap_mean: float
    gap_min: float
    """The recommendation's: the searched mixture or the best run, whichever won the contest."""
    searched_gap_mean: float
    """The searched mixture's, whether it won or not."""
    best_run_gap_mean: float
    spearman_mean: float
    spearman_min: float
    run_won: int
    """Scenarios where the best observed run closed more of the gap than the searched mixture."""
    run_chosen: int
    """Scenarios where the recommendation is the best run (it won the contest)."""
    chosen: str
    """The models ``auto`` fitted, with counts (``auto`` rows)."""


def _observations_to_arrays(history: Sequence[Observation]) -> tuple[np.ndarray, np.ndarray]:
    X = np.array([obs.weights for obs in history])
    y = np.array([obs.objective for obs in history], dtype=float)
    return X, y


def simulated_rows(
    *,
    methods: Sequence[str] = OFFLINE_METHODS,
    models: Sequence[str] = ("auto",),
    laws: Sequence[str] = tuple(LAWS),
    ks: Sequence[int] = (5, 12, 20),
    noises: Sequence[float] = (0.003, 0.01),
    seeds: Sequence[int] = (0, 1, 2),
    verbose: bool = True,
) -> list[OfflineRow]:
    """Every method x model x size over the scenarios ``laws x ks x noises x seeds``."""
    results: dict[tuple[str, str, int], list[tuple[float, float, float, float, str, str]]] = {}
    for law, k, noise, seed in itertools.product(laws, ks, noises, seeds):
        sim = make_law(law, k, seed)
        space = sim.space()
        for method in methods:
            started = time.perf_counter()
            mixer = offline_method(method).from_config({"seed": seed})
            history, _ = propose_and_observe(sim, mixer, seed, batches=(32,) * 4, noise=noise)
            X, y = _observations_to_arrays(history)
            for n, model in itertools.product(SIZES, models):
                ids = [str(i) for i in range(n)]
                fit = fit_model(X[:n], y[:n], ids, model=model, names=space.names, seed=seed)
                rng = np.random.default_rng([seed, n])
                fitted = Usable(observations=(), X=X[:n], y=y[:n], run_ids=tuple(ids))
                rec = recommend(
                    space,
                    fit,
                    rng,
                    max_seconds=SEARCH_SECONDS,
                    runs=fitted,
                    contest=mixer.best_run_competes(n),
                )
                searched_w = rec.weights if rec.searched is None else rec.searched.weights
                results.setdefault((method, model, n), []).append(
                    (
                        sim.gap_closure(rec.weights),
                        sim.gap_closure(searched_w),
                        sim.gap_closure(X[int(np.argmin(y[:n]))]),
                        sim.global_spearman(fit.estimator.predict, seed=seed),
                        fit.model,
                        rec.chosen,
                    )
                )
            if verbose:
                last = results[(method, models[0], SIZES[-1])][-1]
                print(
                    f"  {law:11} K={k:2} noise={noise:.3f} seed={seed} {method:7} "
                    f"gap@128={last[0]:.3f} searched={last[1]:.3f} best-run={last[2]:.3f} "
                    f"rho={last[3]:.3f} ({last[4]}, {last[5]}, "
                    f"{time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
    rows = []
    for (method, model, n), found in results.items():
        gaps, searched, best_runs, rhos, models_chosen, winners = zip(*found, strict=True)
        counts = {name: models_chosen.count(name) for name in sorted(set(models_chosen))}
        rows.append(
            OfflineRow(
                method=method,
                model=model,
                n_runs=n,
                scenarios=len(found),
                gap_mean=float(np.mean(gaps)),
                gap_min=float(np.min(gaps)),
                searched_gap_mean=float(np.mean(searched)),
                best_run_gap_mean=float(np.mean(best_runs)),
                spearman_mean=float(np.mean(rhos)),
                spearman_min=float(np.min(rhos)),
                run_won=int(sum(r > g for r, g in zip(best_runs, searched, strict=True))),
                run_chosen=winners.count("best_run"),
                chosen=" ".join(f"{name}:{c}" for name, c in counts.items()),
            )
        )
    return rows


def print_offline_table(rows: Sequence[OfflineRow]) -> None:
    print(
        f"{'method':8} {'model':10} {'runs':>4} {'n':>3} {'gap mean':>8} {'gap min':>7} "
        f"{'searched':>8} {'best run':>8} {'run won':>7} {'run chosen':>10} {'rho mean':>8} "
        f"{'rho min':>7}  auto chose"
    )
    for r in sorted(rows, key=lambda r: (r.method, r.model, r.n_runs)):
        print(
            f"{r.method:8} {r.model:10} {r.n_runs:4} {r.scenarios:3} {r.gap_mean:8.3f} "
            f"{r.gap_min:7.3f} {r.searched_gap_mean:8.3f} {r.best_run_gap_mean:8.3f} "
            f"{r.run_won:7} {r.run_chosen:10} {r.spearman_mean:8.3f} {r.spearman_min:7.3f}  "
            f"{r.chosen if r.model == 'auto' else ''}"
        )


def print_regmix_backtest(
    models: Sequence[str] = ("auto", "gp", "lightgbm"), seed: int = 0
) -> None:
    """Print the RegMix swarm's backtest at 64 and 128 runs (stored order and random subsets)."""
    data = regmix_splits()
    X, y, ids, names = data["X"], data["y"], data["ids"], data["names"]
    space = DomainSpace.from_swarm(names, X)
    result = backtest(
        space,
        X,
        y,
        ids,
        BacktestPlan(models=list(models), sizes=list(SIZES), designs=("stored", "random")),
        seed=seed,
    )
    ref = result.reference
    print(
        f"RegMix backtest: reference {ref.model} on {result.n_runs} runs, judged {ref.judged:.4f}"
    )
    print(
        f"{'design':7} {'runs':>4} {'model':10} {'chose':10} {'cv rho':>7} {'held-out':>8} "
        f"{'regret':>8}"
    )
    for row in result.rows:
        print(
            f"{row.design:7} {row.n_runs:4} {row.requested:10} {row.model:10} "
            f"{row.cv_spearman or float('nan'):7.3f} {row.heldout_spearman or float('nan'):8.3f} "
            f"{row.regret:8.4f}"
        )


def run_section(
    *,
    models: Sequence[str] = ("auto",),
    laws: Sequence[str] = tuple(LAWS),
    ks: Sequence[int] = (5, 12, 20),
    noises: Sequence[float] = (0.003, 0.01),
    seeds: Sequence[int] = (0, 1, 2),
    regmix: bool = True,
) -> None:
    print("== offline methods: gap closed on hidden laws (mean / min over law x K x noise x seed)")
    rows = simulated_rows(models=models, laws=laws, ks=ks, noises=noises, seeds=seeds)
    print_offline_table(rows)
    if regmix:
        print("== offline: RegMix swarm by backtest")
        print_regmix_backtest()
