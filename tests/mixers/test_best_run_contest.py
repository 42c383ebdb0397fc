# ruff: noqa: N803, N806 - X is the conventional name of a design matrix
"""The best observed run competes with the searched mixture (``recommend``'s ``runs``).

The models here are stand-ins with known predictions (and predictive stds), so each test knows
which of the two the rule must pick: the searched mixture wins only when the model predicts it
better than the best run by more than ``BEST_RUN_CAUTION`` times its extra predictive std.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from mixers import offline_method
from mixers.base import Direction, DomainSpace, Observation
from mixers.fitting import Fit, Usable, fit_model
from mixers.recommendation import BEST_RUN_CAUTION, Recommendation, recommend

NAMES = ("web", "code", "papers", "books")


class Linear:
    """Predicts ``w @ slope``; with ``std_at``, a std of ``std`` within L1 0.3 of it, else 0."""

    def __init__(self, slope: list[float], std: float = 0.0, std_at: Any = None) -> None:
        self.slope = np.asarray(slope, dtype=float)
        self.std, self.std_at = std, None if std_at is None else np.asarray(std_at, dtype=float)

    def predict(self, X: Any, return_std: bool = False) -> Any:
        X = np.atleast_2d(np.asarray(X, dtype=float))
        mean = X @ self.slope
        if not return_std:
            return mean
        near = (
            np.zeros(len(X), bool)
            if self.std_at is None
            else np.abs(X - self.std_at).sum(axis=1) < 0.3
        )
        return mean, np.where(near, self.std, 0.0)


class MeanOnly:
    """A model without a predictive std (``predict`` takes no ``return_std``)."""

    def __init__(self, slope: list[float]) -> None:
        self.slope = np.asarray(slope, dtype=float)

    def predict(self, X: Any) -> Any:
        return np.atleast_2d(np.asarray(X, dtype=float)) @ self.slope


def runs_and_fit(
    estimator: Any, *, direction: Direction = "minimize", n: int = 24, seed: int = 0
) -> tuple[DomainSpace, Usable, Fit]:
    """``n`` Dirichlet runs whose objective is the estimator's prediction, fitted (linear), with
    the fit's model replaced by ``estimator``."""
    rng = np.random.default_rng(seed)
    X = rng.dirichlet(np.ones(len(NAMES)), n)
    y = np.asarray(MeanOnly(list(estimator.slope)).predict(X), dtype=float)
    ids = tuple(f"run-{i}" for i in range(n))
    fit = fit_model(X, y, list(ids), model="linear", names=NAMES, seed=0, direction=direction)
    space = DomainSpace.from_domains([{"name": name} for name in NAMES])
    runs = Usable(observations=(), X=X, y=y, run_ids=ids)
    return space, runs, dataclasses.replace(fit, estimator=estimator)


def contest(fit: Fit, space: DomainSpace, runs: Usable | None) -> Recommendation:
    return recommend(space, fit, np.random.default_rng(1), candidates=4096, runs=runs)


def test_the_searched_mixture_wins_when_the_model_predicts_it_better() -> None:
    space, runs, fit = runs_and_fit(MeanOnly([1.0, 2.0, 3.0, 4.0]))
    rec = contest(fit, space, runs)
    best = int(np.argmin(runs.y))
    assert rec.chosen == "search"
    assert rec.best_run is not None and rec.best_run.run_id == f"run-{best}"
    assert rec.best_run.observed == pytest.approx(runs.y[best])
    np.testing.assert_allclose(rec.best_run.weights, runs.X[best])
    assert rec.predicted.value < rec.best_run.predicted.value
    assert rec.reason is not None and rec.reason.startswith("search: ")
    assert f"run-{best}" in rec.reason
    assert rec.searched is None  # the recommendation is the searched mixture


def test_the_best_run_wins_when_the_model_sees_no_gain_over_it() -> None:
    # A flat model: the search has nothing to offer over a mixture that was trained and seen.
    space, runs, fit = runs_and_fit(MeanOnly([2.0, 2.0, 2.0, 2.0]))
    y = runs.y.copy()
    y[5] -= 0.1  # the best observed run (its report was lucky: the model does not follow it)
    runs = dataclasses.replace(runs, y=y)
    rec = contest(fit, space, runs)
    assert rec.chosen == "best_run"
    assert rec.best_run is not None and rec.best_run.run_id == "run-5"
    np.testing.assert_allclose(rec.weights, runs.X[5])
    assert rec.predicted.value == pytest.approx(2.0)  # the model's value, not the lucky report
    assert rec.reason is not None and rec.reason.startswith("best run: ")
    # The searched mixture stays on offer, first among the alternatives.
    assert rec.alternatives and np.abs(rec.alternatives[0].weights - rec.weights).sum() > 0.05
    assert rec.searched is not None
    np.testing.assert_allclose(rec.alternatives[0].weights, rec.searched.weights)
    assert rec.searched.predicted.value == pytest.approx(rec.alternatives[0].predicted.value)


def test_extra_predictive_std_counts_against_the_searched_mixture() -> None:
    slope = [1.0, 2.0, 3.0, 4.0]
    space, runs, plain = runs_and_fit(MeanOnly(slope))
    searched = contest(plain, space, runs)
    assert searched.chosen == "search" and searched.best_run is not None
    gain = searched.best_run.predicted.value - searched.predicted.value
    # The same means, but the model is unsure where the search goes: by just less, then just
    # more, than the gain over BEST_RUN_CAUTION.
    for std, winner in [
        (0.9 * gain / BEST_RUN_CAUTION, "search"),
        (1.1 * gain / BEST_RUN_CAUTION, "best_run"),
    ]:
        model = Linear(slope, std=std, std_at=searched.weights)
        rec = contest(dataclasses.replace(plain, estimator=model), space, runs)
        assert rec.chosen == winner, (std, rec.reason)
        assert "more predictive std" in (rec.reason or "")


def test_maximize_takes_the_largest_observed_run() -> None:
    space, runs, fit = runs_and_fit(MeanOnly([2.0, 2.0, 2.0, 2.0]), direction="maximize")
    y = runs.y.copy()
    y[3] += 0.1
    rec = contest(fit, space, dataclasses.replace(runs, y=y))
    assert rec.best_run is not None and rec.best_run.run_id == "run-3"


def test_a_best_run_outside_the_bounds_does_not_compete() -> None:
    space, runs, fit = runs_and_fit(MeanOnly([2.0, 2.0, 2.0, 2.0]))
    y = runs.y.copy()
    y[7] -= 0.1
    bounded = dataclasses.replace(space, upper=np.minimum(space.upper, runs.X[7].max() - 1e-3))
    rec = recommend(
        bounded, fit, np.random.default_rng(1), candidates=4096, runs=dataclasses.replace(runs, y=y)
    )
    assert rec.chosen == "search" and rec.best_run is None
    assert rec.reason is not None and "run-7" in rec.reason and "outside" in rec.reason
    assert bool(bounded.contains(rec.weights[None, :])[0])


def test_without_runs_there_is_no_contest() -> None:
    space, _, fit = runs_and_fit(MeanOnly([1.0, 2.0, 3.0, 4.0]))
    rec = contest(fit, space, None)
    assert rec.chosen == "search" and rec.best_run is None and rec.reason is None


def test_without_a_contest_the_best_run_is_reported_but_cannot_win() -> None:
    space, runs, fit = runs_and_fit(MeanOnly([2.0, 2.0, 2.0, 2.0]))
    rec = recommend(space, fit, np.random.default_rng(1), candidates=4096, runs=runs, contest=False)
    assert rec.chosen == "search" and rec.best_run is not None
    assert rec.reason is not None and "does not compete" in rec.reason


@pytest.mark.parametrize(
    ("method", "config", "competes"),
    [
        ("regmix", {}, False),
        ("rounds", {"rounds": [16, 8]}, True),  # 24 runs: 8 searched after the design
        ("rounds", {"rounds": [24, 8]}, False),  # 24 runs: all of them the first design
        ("bayes", {"initial_runs": 16}, True),
        ("bayes", {"initial_runs": 24}, False),
    ],
)
def test_the_best_run_competes_once_a_method_has_searched_past_its_design(
    method: str, config: dict[str, Any], competes: bool
) -> None:
    # A flat model: where the contest is on, the best run wins it.
    space, runs, fit = runs_and_fit(MeanOnly([2.0, 2.0, 2.0, 2.0]))
    history = [
        Observation(weights=w, objective=float(v), run_id=run_id)
        for w, v, run_id in zip(runs.X, runs.y, runs.run_ids, strict=True)
    ]
    mixer = offline_method(method).from_config(config)
    assert mixer.best_run_competes(len(history)) is competes
    rec = mixer.recommend(space, fit, np.random.default_rng(1), history)
    assert rec.best_run is not None
    assert rec.chosen == ("best_run" if competes else "search")
    assert rec.reason is not None and ("does not compete" in rec.reason) is not competes
