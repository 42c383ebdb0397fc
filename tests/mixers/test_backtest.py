# ruff: noqa: N806 - X is the conventional name of a design matrix
"""Backtests: replaying a finished swarm by design, size and model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mixers.backtest import BacktestPlan, backtest, backtest_steps, default_sizes
from mixers.base import DomainSpace
from mixopt.errors import InvalidInput
from tests.regmix_data import DATA, load_regmix


def swarm(n: int = 48, seed: int = 0) -> tuple[DomainSpace, np.ndarray, np.ndarray, list[str]]:
    """A smooth loss with its optimum inside the simplex, plus a little noise."""
    space = DomainSpace.from_domains([{"name": d} for d in ("web", "code", "books", "math")])
    rng = np.random.default_rng(seed)
    X = rng.dirichlet(np.ones(4), size=n)
    target = np.array([0.4, 0.3, 0.2, 0.1])
    y = 3.0 + 2.0 * ((X - target) ** 2).sum(axis=1) + rng.normal(0, 0.002, n)
    return space, X, y, [f"run-{i}" for i in range(n)]


def test_default_sizes_double_up_to_every_run():
    assert default_sizes(512) == [32, 64, 128, 256, 512]
    assert default_sizes(100) == [32, 64, 100]
    assert default_sizes(20) == [20]
    assert default_sizes(5) == []


def test_rows_cover_every_design_size_and_model_and_auto_takes_the_best_cv():
    space, X, y, ids = swarm()
    calls: list[tuple[int, int]] = []
    plan = BacktestPlan(
        models=["linear", "lightgbm", "auto"],
        sizes=[16, 48],
        designs=["stored", "random"],
        progress=lambda done, total, what: calls.append((done, total)),
    )
    result = backtest(space, X, y, ids, plan, search_candidates=2000)
    assert len(result.rows) == 2 * 2 * 3
    assert (
        calls[-1] == (backtest_steps(["stored", "random"], [16, 48], ["linear", "lightgbm"]),) * 2
    )
    assert [done for done, _ in calls] == list(range(1, len(calls) + 1))
    for design in ("stored", "random"):
        for size in (16, 48):
            cell = [r for r in result.rows if r.design == design and r.n_runs == size]
            fitted = {r.requested: r for r in cell}
            assert set(fitted) == {"linear", "lightgbm", "auto"}
            best = max(("linear", "lightgbm"), key=lambda m: fitted[m].cv_spearman or -1)
            assert fitted["auto"].model == best
            assert fitted["auto"].judged == fitted[best].judged
            for row in cell:
                assert sum(row.weights.values()) == pytest.approx(1.0)
                assert (row.heldout_spearman is None) == (size == 48)
    # Every run seen, the reference's own model: the reference's own recommendation.
    full = next(r for r in result.rows if r.n_runs == 48 and r.requested == "lightgbm")
    assert full.regret == pytest.approx(0.0, abs=1e-12)
    assert result.reference.model == "lightgbm"


def test_backtest_is_reproducible():
    space, X, y, ids = swarm()
    plan = BacktestPlan(models=["linear"], sizes=[16, 32], designs=["random"])
    first = backtest(space, X, y, ids, plan, search_candidates=2000)
    second = backtest(space, X, y, ids, plan, search_candidates=2000)

    def strip(row: object) -> dict[str, object]:
        return {k: v for k, v in dataclasses.asdict(row).items() if k != "seconds"}  # type: ignore[call-overload]

    assert [strip(r) for r in first.rows] == [strip(r) for r in second.rows]


def test_a_method_design_is_answered_by_the_nearest_unused_runs():
    space, X, y, ids = swarm(n=64)
    plan = BacktestPlan(models=["linear"], sizes=[16, 32], designs=["regmix"])
    result = backtest(space, X, y, ids, plan, search_candidates=2000)
    rows = result.rows
    assert [r.n_runs for r in rows] == [16, 32]
    assert all(r.match_l1 is not None and 0 <= r.match_l1 < 2 for r in rows)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"models": ["forest"]}, "models"),
        ({"models": []}, "models"),
        ({"designs": ["nope"]}, "designs"),
        ({"sizes": [4]}, "sizes"),
        ({"sizes": [49]}, "sizes"),
        ({"reference_model": "auto"}, "reference_model"),
    ],
)
def test_bad_choices_name_the_field(kwargs, field):
    space, X, y, ids = swarm()
    with pytest.raises(InvalidInput) as exc:
        backtest(space, X, y, ids, BacktestPlan(**kwargs))
    assert exc.value.errors[0].loc == (field,)


def test_a_backtest_over_its_fit_budget_is_refused_before_fitting():
    space, X, y, ids = swarm()
    calls: list[int] = []
    plan = BacktestPlan(
        models=["linear", "lightgbm"],
        sizes=[16, 32, 48],
        max_fits=6,
        progress=lambda done, total, what: calls.append(done),
    )
    with pytest.raises(InvalidInput) as exc:
        backtest(space, X, y, ids, plan)
    assert exc.value.errors[0].loc == ()
    assert "7 fits" in str(exc.value.errors[0].msg)
    assert calls == []


@pytest.mark.slow
def test_regmix_swarm_backtest_improves_with_more_runs():
    """On the real swarm, LightGBM ranks unseen runs better with more seen, and its
    recommendation with 256 runs is judged close to the one with all 512."""
    if not DATA.is_dir():
        pytest.skip(f"RegMix data not found at {DATA}")
    X, y, names, ids = load_regmix("train")
    space = DomainSpace.from_swarm(names, X)
    result = backtest(space, X, y, ids, BacktestPlan(models=["lightgbm"], sizes=[32, 256]))
    small, large = result.rows
    assert large.heldout_spearman is not None and small.heldout_spearman is not None
    assert large.heldout_spearman > 0.95 > small.heldout_spearman
    assert large.regret < 0.03 < small.regret
