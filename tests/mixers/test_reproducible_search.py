# ruff: noqa: N803, N806 - X is the conventional name of a design matrix (scikit-learn)
"""The search is sized by candidate counts, not the clock: load does not change the answer."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import pytest

from mixers.fitting import MetricModel, fit_model
from mixers.recommendation import SEARCH_SECONDS, recommend, search_candidates
from mixers.search import CHUNK
from tests.mixers.test_fitting import synthetic_runs, synthetic_space


class SlowEstimator:
    """The fitted model, with every ``predict`` call delayed: a machine under load."""

    def __init__(self, inner: Any, delay: float) -> None:
        self.inner, self.delay = inner, delay

    def predict(self, X: Any) -> Any:
        time.sleep(self.delay)
        return self.inner.predict(X)


@pytest.fixture(scope="module")
def linear_fit() -> Any:
    space = synthetic_space()
    X, y, ids = synthetic_runs(space, 64, seed=3)
    return space, fit_model(X, y, ids, model="linear", names=space.names, seed=0)


def test_a_slowed_scorer_gets_the_same_recommendation(linear_fit: Any) -> None:
    # With the former clock-based budget, the delay cut the slowed search to about half the
    # candidates (0.05 s per chunk of 8192 against ~6 us a row) and moved the recommendation.
    space, result = linear_fit
    slowed = dataclasses.replace(result, estimator=SlowEstimator(result.estimator, 0.05))
    quiet = recommend(space, result, np.random.default_rng(7), max_seconds=0.5)
    busy = recommend(space, slowed, np.random.default_rng(7), max_seconds=0.5)
    assert busy.search.candidates == quiet.search.candidates == search_candidates(result, 0.5)
    assert busy.search.seconds > quiet.search.seconds  # it was slowed, and still did the work
    np.testing.assert_array_equal(busy.weights, quiet.weights)
    assert [a.weights.tolist() for a in busy.alternatives] == [
        a.weights.tolist() for a in quiet.alternatives
    ]


def test_the_count_follows_the_models_measured_cost(linear_fit: Any) -> None:
    _, result = linear_fit

    def count(model: str, k: int = 17, n: int = 512, members: tuple[str, ...] = ()) -> int:
        shaped = dataclasses.replace(
            result,
            model=model,
            names=tuple(f"d{i}" for i in range(k)),
            n_runs=n,
            metric_models=tuple(
                MetricModel(f"m{i}", 0.5, m, None, 0.0) for i, m in enumerate(members)
            ),
        )
        return search_candidates(shaped, SEARCH_SECONDS)

    assert count("linear") == 100_000  # the cap: drawing costs more than scoring
    assert 30_000 <= count("lightgbm") <= 40_000  # 1000 trees: ~70 us a candidate
    assert count("gp", n=128) > count("gp", n=512) > count("gp", k=64, n=512)  # O(n K) kernel
    assert count("lightgbm", k=64) < count("lightgbm")  # drawing grows with K
    # A per-metric fit scores every metric's regressor: two trees cost about twice one.
    two_trees = count("per_metric(lightgbm)", members=("lightgbm", "lightgbm"))
    assert two_trees == pytest.approx(count("lightgbm") / 2, rel=0.1)
    assert count("someone_elses_regressor") <= count("lightgbm")  # unknown: assumed slow
    assert search_candidates(result, 0.0) == CHUNK  # never below one chunk


def test_the_time_budget_must_be_a_finite_non_negative_number(linear_fit: Any) -> None:
    _, result = linear_fit
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="seconds"):
            search_candidates(result, bad)
