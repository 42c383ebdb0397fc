# ruff: noqa: N803, N806 - X is the conventional name of a design matrix (scikit-learn)
"""``auto``'s choice does not depend on the runs' order, and near ties go to the simpler model."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from scipy import stats

from mixers.base import DomainSpace
from mixers.fitting import TIE_PREFERENCE, Fit, _choose, _replicate_groups, fit_model
from mixers.persistence import dump_fit, load_fit
from mixers.recommendation import recommend
from mixopt.schemas import FitReport
from service.convert import fit_report
from tests.mixers.test_fitting import synthetic_runs, synthetic_space
from tests.regmix_data import regmix_splits


def shuffled(X: Any, y: Any, ids: list[str], seed: int) -> tuple[Any, Any, list[str]]:
    order = np.random.default_rng(seed).permutation(len(y))
    return X[order], y[order], [ids[i] for i in order]


def same_fit(a: Fit, b: Fit) -> None:
    assert (a.model, a.tied, a.candidates, a.cv) == (b.model, b.tied, b.candidates, b.cv)
    assert {o.run_id: o.predicted for o in a.oof} == {o.run_id: o.predicted for o in b.oof}


def shuffled_fits(model: str) -> tuple[DomainSpace, Fit, Fit, list[str]]:
    """``model`` on 48 synthetic runs, and on the same runs shuffled (and those runs' ids)."""
    space = synthetic_space()
    X, y, ids = synthetic_runs(space, 48, seed=5, noise=0.05)
    X_s, y_s, ids_s = shuffled(X, y, ids, 1)
    return (
        space,
        fit_model(X, y, ids, model=model, names=space.names, seed=0, importance=False),
        fit_model(X_s, y_s, ids_s, model=model, names=space.names, seed=0, importance=False),
        ids_s,
    )


@pytest.mark.parametrize(
    "model",
    ["linear", pytest.param("auto", marks=pytest.mark.slow)],  # auto twice: ~10 s
)
def test_shuffled_runs_give_the_same_fit_and_recommendation(model):
    space, fit, refit, shuffled_ids = shuffled_fits(model)
    same_fit(fit, refit)
    assert [o.run_id for o in refit.oof] == shuffled_ids  # the report keeps the caller's order
    first, second = (
        recommend(space, f, np.random.default_rng(3), candidates=20_000) for f in (fit, refit)
    )
    np.testing.assert_allclose(second.weights, first.weights, atol=1e-12)


def candidate(y: Any, noise: float, seed: int) -> Any:
    return y + np.random.default_rng(seed).normal(0.0, noise, len(y))


def test_a_near_tie_goes_to_the_simpler_model_and_is_reported():
    y = np.random.default_rng(0).normal(size=200)
    groups = _replicate_groups(y[:, None])
    # Two nearly equal candidates; the better one is called lightgbm, the other gp.
    a, b = candidate(y, 0.30, 1), candidate(y, 0.30, 1) + candidate(np.zeros(200), 0.05, 2)
    rho = {id(o): float(stats.spearmanr(y, o).statistic) for o in (a, b)}
    lightgbm, gp = sorted((a, b), key=lambda o: -rho[id(o)])
    evaluated: list[tuple[str, Any, dict[str, float | None]]] = [
        (name, oof, {"spearman": float(stats.spearmanr(y, oof).statistic)})
        for name, oof in [("linear", candidate(y, 3.0, 3)), ("lightgbm", lightgbm), ("gp", gp)]
    ]
    assert rho[id(lightgbm)] > rho[id(gp)]  # lightgbm is the best...
    chosen, _, _, tied = _choose(evaluated, y, groups, seed=0)
    assert chosen == "gp" and tied == ("lightgbm", "gp")  # ...but gp is simpler, within noise
    assert TIE_PREFERENCE.index("gp") < TIE_PREFERENCE.index("lightgbm")


def test_a_clear_winner_is_chosen_and_nothing_is_tied():
    y = np.random.default_rng(0).normal(size=200)
    groups = _replicate_groups(y[:, None])
    evaluated: list[tuple[str, Any, dict[str, float | None]]] = [
        ("linear", candidate(y, 1.0, 3), {"spearman": 0.70}),
        ("lightgbm", candidate(y, 0.05, 1), {"spearman": 0.99}),
    ]
    chosen, _, _, tied = _choose(evaluated, y, groups, seed=0)
    assert chosen == "lightgbm" and tied == ()


def test_the_tied_candidates_are_stored_and_reported():
    space = synthetic_space()
    X, y, ids = synthetic_runs(space, 24, seed=5)
    fit = dataclasses.replace(
        fit_model(X, y, ids, model="linear", names=space.names, seed=0, importance=False),
        tied=("linear", "gp"),
    )
    loaded = load_fit(dump_fit(fit))
    assert loaded.tied == fit.tied
    wire = FitReport.model_validate(
        {"id": "1", "fitted_at": "2026-01-01T00:00:00Z", **fit_report(fit)}
    )
    assert wire.tied == list(fit.tied)


@pytest.mark.slow  # auto on RegMix's 512 runs, twice: ~30 s on a loaded 2-core host
def test_regmix_swarm_in_another_order_gives_the_same_model_and_mixture():
    data = regmix_splits()
    X, y, ids, names = data["X"], data["y"], data["ids"], data["names"]
    space = DomainSpace.from_swarm(names, X)
    fits = [
        fit_model(*rows, names=names, seed=0, importance=False)
        for rows in [(X, y, ids), shuffled(X, y, ids, 7)]
    ]
    same_fit(*fits)
    # LightGBM and GP are within 0.002 of each other: tied, and the simpler GP is fitted.
    assert fits[0].model == "gp" and set(fits[0].tied) == {"gp", "lightgbm"}
    recs = [
        recommend(space, f, np.random.default_rng([0, len(y)]), candidates=30_000) for f in fits
    ]
    pile_cc = names.index("pile_cc")
    assert abs(recs[0].weights[pile_cc] - recs[1].weights[pile_cc]) <= 1e-9
