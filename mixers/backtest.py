# ruff: noqa: N803, N806 - X is the conventional name of a design matrix (scikit-learn)
"""Backtest: replay a finished swarm to see what each regressor and design would have told you.

A swarm of N finished runs answers questions that cost real compute to ask afresh: would 64 runs
have been enough? Which regressor should this kind of data get? Would another design have
found the optimum with fewer runs? ``backtest`` answers them by replay:

* **Designs** choose which runs are "seen" at each size ``n``.
  - ``stored``: the first ``n`` runs in the order they were created (what really happened).
  - ``random``: ``n`` runs drawn at random (seeded): whether the order mattered.
  - any registered offline method (``regmix``, ``rounds``, ``bayes``...): the method proposes
    in batches (the sizes' steps) from what it has seen so far, and each proposal is answered
    by the nearest stored run not yet used (L1 distance, reported as ``match_l1``): the swarm
    acts as an oracle with a fixed set of answers.
* **Models**: at each size every requested regressor is cross-validated on the seen runs,
  refitted and searched; ``auto`` is the row of the model with the best cross-validated
  Spearman (no extra fit: it is what ``auto`` would have chosen). When the objective combines
  several metrics (``terms``), ``auto`` is a fit of its own: it also weighs per-metric fits
  (``fit_model``), which no single-regressor row has.
* **Scores** of a row: the cross-validated Spearman on the seen runs; the Spearman of its
  predictions on the unseen runs (``heldout_spearman``; none when every run was seen); and
  ``judged``, the value of its recommendation under the **reference**: a fit of
  ``reference_model`` on all N runs. ``regret`` is ``judged`` minus the reference's value of its
  own recommendation, in the direction that makes positive worse.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mixers.base import Direction, DomainSpace, FloatArray, Observation
from mixers.fitting import MIN_RUNS, Fit, MetricTerms, Usable, fit_model, spearman_or_none
from mixers.recommendation import Recommendation, recommend
from mixers.registry import offline_method, offline_methods
from mixers.regressors import regressor_names
from mixopt.errors import InvalidInput

__all__ = [
    "BASE_DESIGNS",
    "Backtest",
    "BacktestPlan",
    "BacktestReference",
    "BacktestRow",
    "backtest",
    "backtest_steps",
    "default_sizes",
]

BASE_DESIGNS = ("stored", "random")
"""Designs that pick among the stored runs directly; any offline method name is a design too."""

Progress = Callable[[int, int, str], None]
"""``(done, total, what)``: called after each fit."""


def default_sizes(n: int, start: int = 32) -> list[int]:
    """32, 64, 128, ... below ``n``, then ``n`` itself (never fewer than ``MIN_RUNS``)."""
    sizes: list[int] = []
    size = max(start, MIN_RUNS)
    while size < n:
        sizes.append(size)
        size *= 2
    return [*sizes, n] if n >= MIN_RUNS else []


@dataclass(frozen=True)
class BacktestRow:
    design: str
    n_runs: int
    model: str
    """The regressor fitted; for ``auto`` the one it would have chosen."""
    requested: str
    cv_spearman: float | None
    heldout_spearman: float | None
    predicted: float
    """The row's own model's prediction for its recommendation."""
    judged: float
    """The reference's prediction for the row's recommendation."""
    regret: float
    weights: dict[str, float]
    match_l1: float | None = None
    """Mean L1 distance between a method's proposals and the stored runs that answered them."""
    seconds: float = 0.0


@dataclass(frozen=True)
class BacktestReference:
    """The fit on every run that judges the rows: its model, score and own recommendation."""

    model: str
    cv_spearman: float | None
    weights: dict[str, float]
    judged: float


@dataclass(frozen=True)
class BacktestPlan:
    """What to replay (see ``backtest``): ``None`` for the defaults."""

    models: Sequence[str] | None = None
    sizes: Sequence[int] | None = None
    designs: Sequence[str] = ("stored",)
    reference_model: str = "lightgbm"
    max_fits: int | None = None
    progress: Progress | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Backtest:
    rows: list[BacktestRow]
    reference: BacktestReference
    n_runs: int
    sizes: list[int]
    designs: list[str]
    models: list[str]
    direction: Direction = "minimize"
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # rows included: asdict recurses


def _check_choice(values: Sequence[str], known: Sequence[str], field_name: str) -> None:
    errors = [v for v in values if v not in known]
    if errors or not values:
        raise InvalidInput.at(
            (field_name,),
            f"unknown {field_name} {', '.join(map(repr, errors)) or '(none given)'}; "
            f"known: {', '.join(known)}",
        )


def backtest_steps(
    designs: Sequence[str], sizes: Sequence[int], models: Sequence[str], *, per_metric: bool = False
) -> int:
    """The number of fits a backtest makes (for a progress bar): one per model and cell, plus
    the reference; with ``per_metric`` (an objective of several metrics) ``auto`` is one more
    per cell."""
    fitted = [m for m in models if m != "auto"] or list(regressor_names())
    own_auto = int(per_metric and "auto" in models)
    return len(designs) * len(sizes) * (len(fitted) + own_auto) + 1


def _design_order(
    design: str,
    space: DomainSpace,
    X: FloatArray,
    y: FloatArray,
    sizes: Sequence[int],
    seed: int,
) -> tuple[np.ndarray, float | None]:
    """Indices of the runs in the order the design sees them, and the mean match distance."""
    n = len(y)
    if design == "stored":
        return np.arange(n), None
    if design == "random":
        return np.random.default_rng([seed, 1]).permutation(n), None
    mixer = offline_method(design).from_config({"seed": seed})
    mixer.check_space(space)
    used = np.zeros(n, dtype=bool)
    order: list[int] = []
    distances: list[float] = []
    history: list[Observation] = []
    for size in sizes:
        count = size - len(order)
        if count <= 0:
            continue
        rng = np.random.default_rng([seed, len(history)])
        proposals = mixer.propose(space, history, count, rng)
        for proposal in proposals:
            gaps = np.abs(X - np.asarray(proposal.weights)[None, :]).sum(axis=1)
            gaps[used] = np.inf
            chosen = int(np.argmin(gaps))
            used[chosen] = True
            order.append(chosen)
            distances.append(float(gaps[chosen]))
            history.append(Observation(weights=X[chosen], objective=float(y[chosen])))
    return np.array(order, dtype=np.intp), (float(np.mean(distances)) if distances else None)


def backtest(
    space: DomainSpace,
    X: FloatArray,
    y: FloatArray,
    run_ids: Sequence[str],
    plan: BacktestPlan | None = None,
    *,
    direction: Direction = "minimize",
    seed: int = 0,
    search_candidates: int = 10_000,
    terms: MetricTerms | None = None,
    contest: bool = False,
) -> Backtest:
    """Replay the swarm ``(X, y)`` (rows in creation order) for each design, size and model.

    ``models``: regressor names and/or ``auto`` (default: every registered regressor and
    ``auto``). ``sizes``: runs seen (default 32, 64, ... and N). Invalid choices raise
    ``InvalidInput`` located at ``("models" | "sizes" | "designs" | "reference_model",)``,
    and more than ``max_fits`` fits at ``()``.

    Each search scores a fixed ``search_candidates`` (no time budget, unlike ``POST /fit``), so a
    backtest is reproducible and rows differ by what they saw, not by how busy the machine was.

    ``terms``: the runs' per-metric values when the objective is a weighted sum of metrics (rows
    as ``X``); the ``auto`` rows then come from ``auto`` fits, per-metric candidates included.

    ``contest``: whether the best run seen competes with each searched mixture, as the
    experiment's method lets it in ``POST /fit`` (``OfflineMixer.best_run_competes``).
    """
    plan = plan or BacktestPlan()
    models, sizes, designs = plan.models, plan.sizes, plan.designs
    reference_model, max_fits, progress = plan.reference_model, plan.max_fits, plan.progress
    started = time.perf_counter()
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float).ravel()
    n = len(y)
    known = regressor_names()
    models = list(models) if models is not None else [*known, "auto"]
    _check_choice(models, [*known, "auto"], "models")
    offline = [cls.name for cls in offline_methods()]
    _check_choice(list(designs), [*BASE_DESIGNS, *offline], "designs")
    sizes = sorted(set(sizes)) if sizes is not None else default_sizes(n)
    bad = [s for s in sizes if not MIN_RUNS <= s <= n]
    if bad or not sizes:
        raise InvalidInput.at(
            ("sizes",),
            f"sizes must lie between {MIN_RUNS} and the {n} usable runs; got "
            f"{', '.join(map(str, bad)) or 'none'}",
        )
    _check_choice([reference_model], known, "reference_model")
    fitted_models = [m for m in models if m != "auto"] or list(known)
    total = backtest_steps(designs, sizes, models, per_metric=terms is not None)
    if max_fits is not None and total > max_fits:
        raise InvalidInput.at(
            (),
            f"{total} fits ({len(designs)} designs x {len(sizes)} sizes x models): at most "
            f"{max_fits} per request; ask for fewer sizes or models",
        )
    done = 0

    def tick(what: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, what)

    sign = 1.0 if direction == "minimize" else -1.0

    def fit_and_recommend(rows: NDArray[np.intp], model: str) -> tuple[Fit, Recommendation]:
        """A fit on the ``rows`` runs and its search, seeded by how many runs it saw."""
        ids = [run_ids[i] for i in rows]
        fit = fit_model(
            X[rows], y[rows], ids, model=model, names=space.names, seed=seed,
            direction=direction, importance=False,
            terms=None if terms is None or model != "auto" else terms.rows(rows),
        )  # fmt: skip
        rng = np.random.default_rng([seed, len(rows)])
        runs = Usable(observations=(), X=X[rows], y=y[rows], run_ids=tuple(ids))
        return fit, recommend(
            space, fit, rng, candidates=search_candidates, runs=runs, contest=contest
        )

    reference, ref_rec = fit_and_recommend(np.arange(n), reference_model)
    ref_value = float(reference.estimator.predict(ref_rec.weights[None])[0])
    tick(f"reference {reference_model} on {n} runs")

    rows: list[BacktestRow] = []
    for design in designs:
        order, match_l1 = _design_order(design, space, X, y, sizes, seed)
        for size in sizes:
            seen = order[:size]
            unseen = np.setdiff1d(np.arange(n), seen)
            cell: list[BacktestRow] = []
            # With several metrics ``auto`` may fit them one by one: a fit of its own.
            own_auto = ["auto"] if terms is not None and "auto" in models else []
            for model in [*fitted_models, *own_auto]:
                row_started = time.perf_counter()
                result, rec = fit_and_recommend(seen, model)
                judged = float(reference.estimator.predict(rec.weights[None])[0])
                held = (  # a rank correlation of fewer than 3 runs says nothing
                    spearman_or_none(y[unseen], np.asarray(result.estimator.predict(X[unseen])))
                    if len(unseen) >= 3
                    else None
                )
                cell.append(
                    BacktestRow(
                        design=design,
                        n_runs=size,
                        model=result.model,
                        requested=model,
                        cv_spearman=result.cv.spearman,
                        heldout_spearman=held,
                        predicted=rec.predicted.value,
                        judged=judged,
                        regret=sign * (judged - ref_value),
                        weights=space.to_dict(rec.weights),
                        match_l1=match_l1,
                        seconds=time.perf_counter() - row_started,
                    )
                )
                tick(f"{design}: {model} on {size} runs")
            rows.extend(cell)
            if "auto" in models and not own_auto:
                best = max(
                    cell,
                    key=lambda r: r.cv_spearman if r.cv_spearman is not None else -math.inf,
                )
                rows.append(replace(best, requested="auto", seconds=0.0))
    return Backtest(
        rows=rows,
        reference=BacktestReference(
            model=reference.model,
            cv_spearman=reference.cv.spearman,
            weights=space.to_dict(ref_rec.weights),
            judged=ref_value,
        ),
        n_runs=n,
        sizes=list(sizes),
        designs=list(designs),
        models=models,
        direction=direction,
        seconds=time.perf_counter() - started,
    )
