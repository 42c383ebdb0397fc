# ruff: noqa: N803, N806 - X is the conventional name of a design matrix (scikit-learn)
"""Per-metric fits: ``auto`` on an objective that is a weighted sum of metrics.

Synthetic swarms whose metrics follow known laws; the registry is cut to ``linear`` and ``gp``
(real regressors, the fast ones) so that each fit takes well under a second.
"""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from numpy.typing import NDArray

from mixers.backtest import BacktestPlan, backtest, backtest_steps
from mixers.base import DomainSpace, Observation
from mixers.fitting import (
    Fit,
    MetricTerms,
    _conformal_offsets,
    _fold_of,
    _per_metric_candidates,
    _replicate_groups,
    fit_model,
    predict,
    usable_runs,
)
from mixers.persistence import UnreadableFit, dump_fit, load_fit
from mixers.recommendation import recommend
from mixers.regressors import REGRESSORS
from mixers.regressors.per_metric import PerMetricRegressor
from mixopt.schemas import FitReport
from service.convert import fit_report

FloatArray = NDArray[np.float64]
K = 4


@pytest.fixture
def linear_and_gp(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(REGRESSORS):
        if name not in ("linear", "gp"):
            monkeypatch.delitem(REGRESSORS, name)


def own_domain_losses(n: int, seed: int, noise: float = 0.01) -> tuple[FloatArray, FloatArray]:
    """RegMix-like: metric ``i`` is the loss on domain ``i``, ``3 + 2 exp(-10 w_i)``, so the mean
    is an additive function of every weight while each metric depends on one."""
    rng = np.random.default_rng(seed)
    X = rng.dirichlet(np.full(K, 0.5), size=n)
    V = 3.0 + 2.0 * np.exp(-10.0 * X) + rng.normal(0.0, noise, size=(n, K))
    return X, V


def mean_terms(V: FloatArray) -> MetricTerms:
    m = V.shape[1]
    return MetricTerms(tuple(f"loss/{i}" for i in range(m)), np.full(m, 1.0 / m), V)


def fit_terms(X: FloatArray, terms: MetricTerms, *, importance: bool = True) -> Fit:
    y = terms.values @ terms.weights
    ids = [f"run-{i}" for i in range(len(y))]
    names = [f"d{i}" for i in range(X.shape[1])]
    return fit_model(X, y, ids, names=names, seed=0, terms=terms, importance=importance)


@pytest.mark.parametrize("seed", [0, 1])
def test_auto_fits_each_metric_when_each_follows_its_own_law(linear_and_gp, seed):
    X, V = own_domain_losses(48, seed)
    terms = mean_terms(V)
    fit = fit_terms(X, terms, importance=False)

    scores = {c.model: c.spearman for c in fit.candidates if c.spearman is not None}
    assert {"linear", "gp", "per_metric(gp)", "per_metric(linear)"} <= set(scores)
    assert fit.model == "per_metric(gp)" and fit.requested == "auto"
    assert fit.cv.spearman == scores["per_metric(gp)"]
    assert scores["per_metric(gp)"] > max(scores["linear"], scores["gp"]) + 0.03
    assert isinstance(fit.estimator, PerMetricRegressor)
    assert [m.metric for m in fit.metric_models] == list(terms.names)
    assert all(m.model == "gp" and m.weight == 0.25 for m in fit.metric_models)
    assert all(m.spearman is not None and m.spearman > 0.95 for m in fit.metric_models)
    # The intervals are the conformal offsets of the combined out-of-fold residuals.
    residuals = np.array([o.actual - o.predicted for o in fit.oof])
    assert fit.residual_quantiles == _conformal_offsets(residuals)
    np.testing.assert_allclose([o.actual for o in fit.oof], V.mean(axis=1))


def test_auto_keeps_the_aggregate_when_the_metrics_do_not_fit_better_alone(linear_and_gp):
    # Each metric carries a wiggly term that cancels in the sum: the sum is linear, the parts
    # are not, so the parts' errors add up while one linear fit of the sum is exact.
    rng = np.random.default_rng(2)
    n = 48
    X = rng.dirichlet(np.full(K, 0.5), size=n)
    wiggle = 0.5 * np.sin(25 * X[:, 0]) * np.cos(20 * X[:, 1])
    A = 2.0 + X @ np.array([1.0, -1.0, 0.5, 0.0]) + wiggle + rng.normal(0, 0.01, n)
    B = 3.0 - wiggle + rng.normal(0, 0.01, n)
    terms = MetricTerms(("A", "B"), np.array([0.5, 0.5]), np.column_stack([A, B]))
    fit = fit_terms(X, terms, importance=False)

    assert fit.model in ("linear", "gp")
    assert not isinstance(fit.estimator, PerMetricRegressor) and fit.metric_models == ()
    per_metric = [c for c in fit.candidates if c.model.startswith("per_metric(")]
    assert per_metric and all((c.spearman or -1.0) < (fit.cv.spearman or -1.0) for c in per_metric)


def test_mixed_candidate_gives_each_metric_its_best_regressor(linear_and_gp):
    rng = np.random.default_rng(0)
    n = 48
    X = rng.dirichlet(np.full(K, 0.5), size=n)
    linear_metric = 2.0 + X @ np.array([1.0, -1.0, 0.5, 0.0]) + rng.normal(0, 0.05, n)
    law_metric = 3.0 + 2.0 * np.exp(-10.0 * X[:, 1]) + rng.normal(0, 0.01, n)
    terms = MetricTerms(
        ("A", "B"), np.array([0.5, 0.5]), np.column_stack([linear_metric, law_metric])
    )
    fold = _fold_of(_replicate_groups(X), 5, 0)
    found = {c.name: c for c in _per_metric_candidates(X, terms, fold, 5, 0, ["gp", "linear"])}
    assert set(found) == {"per_metric(gp)", "per_metric(linear)", "per_metric(mixed)"}
    mixed = found["per_metric(mixed)"]
    assert mixed.models == ("linear", "gp")
    np.testing.assert_array_equal(mixed.oof[:, 0], found["per_metric(linear)"].oof[:, 0])
    np.testing.assert_array_equal(mixed.oof[:, 1], found["per_metric(gp)"].oof[:, 1])


def test_per_metric_intervals_cover_held_out_runs_at_about_80_percent(linear_and_gp):
    X, V = own_domain_losses(96, seed=3, noise=0.03)
    fit = fit_terms(X, mean_terms(V), importance=False)
    assert fit.model.startswith("per_metric(")
    X_new, V_new = own_domain_losses(600, seed=4, noise=0.03)
    _, low, high = predict(fit, X_new)
    covered = np.mean((low <= V_new.mean(axis=1)) & (V_new.mean(axis=1) <= high))
    assert 0.7 <= covered <= 0.92


def test_per_metric_fit_round_trips_through_storage_and_predicts_the_sum(linear_and_gp):
    X, V = own_domain_losses(48, seed=0)
    fit = fit_terms(X, mean_terms(V))
    assert sum(fit.importance.values()) == pytest.approx(1.0)
    X_new, _ = own_domain_losses(50, seed=9)
    members = fit.estimator.predict_metrics(X_new)
    np.testing.assert_allclose(predict(fit, X_new)[0], members.mean(axis=1), rtol=1e-12)

    again = load_fit(dump_fit(fit))
    assert isinstance(again.estimator, PerMetricRegressor)
    for a, b in zip(predict(fit, X_new), predict(again, X_new), strict=True):
        np.testing.assert_array_equal(a, b)
    assert fit_report(again) == fit_report(fit)
    report = FitReport.model_validate(
        {**fit_report(fit), "id": "f", "fitted_at": "2026-01-01T00:00:00Z"}
    )
    assert [m.model for m in report.per_metric] == ["gp"] * K


def test_a_stored_per_metric_fit_with_a_missing_member_is_unreadable(linear_and_gp):
    X, V = own_domain_losses(48, seed=0)
    document = json.loads(zlib.decompress(dump_fit(fit_terms(X, mean_terms(V), importance=False))))
    document["estimator"]["state"]["members"].pop()
    with pytest.raises(UnreadableFit, match="members"):
        load_fit(zlib.compress(json.dumps(document).encode()))


def test_recommendation_of_a_per_metric_fit_finds_the_balanced_mixture(linear_and_gp):
    X, V = own_domain_losses(48, seed=0)
    fit = fit_terms(X, mean_terms(V), importance=False)
    space = DomainSpace.from_domains([{"name": f"d{i}"} for i in range(K)])
    rec = recommend(space, fit, np.random.default_rng(0), candidates=4000, trust_region=False)
    # Every domain's loss falls the same way with its weight: the best mean is uniform.
    np.testing.assert_allclose(rec.weights, np.full(K, 0.25), atol=0.08)
    assert rec.model == fit.model


def test_usable_runs_carry_the_objectives_metrics_only_when_every_run_has_them():
    rows = [
        Observation(
            weights=np.array([0.5, 0.5]),
            objective=0.5 * a + 0.5 * b,
            metrics={"a": a, "b": b},
            run_id=f"r{i}",
        )
        for i, (a, b) in enumerate((float(i), float(2 * i)) for i in range(8))
    ]
    usable = usable_runs(rows, 2, metric_weights={"a": 0.5, "b": 0.5, "unused": 0.0})
    assert usable.terms is not None and usable.terms.names == ("a", "b")
    np.testing.assert_array_equal(usable.terms.values @ usable.terms.weights, usable.y)
    assert usable_runs(rows, 2, metric_weights={"a": 1.0}).terms is None  # one metric
    assert usable_runs(rows, 2).terms is None
    lacking = [*rows[:-1], Observation(weights=np.array([0.5, 0.5]), objective=1.0)]
    assert usable_runs(lacking, 2, metric_weights={"a": 0.5, "b": 0.5}).terms is None


def test_terms_of_another_objective_are_refused(linear_and_gp):
    X, V = own_domain_losses(16, seed=0)
    terms = mean_terms(V)
    with pytest.raises(ValueError, match="another objective"):
        fit_model(X, V[:, 0], [str(i) for i in range(16)], names=list("abcd"), seed=0, terms=terms)


def test_backtest_auto_rows_come_from_auto_fits_with_per_metric_candidates(linear_and_gp):
    X, V = own_domain_losses(48, seed=1)
    terms = mean_terms(V)
    space = DomainSpace.from_domains([{"name": f"d{i}"} for i in range(K)])
    y = terms.values @ terms.weights
    seen = []
    plan = BacktestPlan(
        models=["linear", "auto"],
        sizes=[40],
        reference_model="linear",
        progress=lambda done, total, what: seen.append((done, total)),
    )
    result = backtest(
        space, X, y, [str(i) for i in range(48)], plan, search_candidates=2000, terms=terms
    )
    auto_rows = [r for r in result.rows if r.requested == "auto"]
    assert [r.n_runs for r in auto_rows] == [40]
    assert all(r.model.startswith("per_metric(") for r in auto_rows)
    linear_rows = [r for r in result.rows if r.requested == "linear"]
    for auto_row, linear_row in zip(auto_rows, linear_rows, strict=True):
        assert (auto_row.cv_spearman or 0.0) > (linear_row.cv_spearman or 0.0)
    total = backtest_steps(["stored"], [40], ["linear", "auto"], per_metric=True)
    assert seen[-1] == (total, total) == (3, 3)  # linear, auto and the reference
