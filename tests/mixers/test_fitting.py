# ruff: noqa: N803, N806 - X is the conventional name of a design matrix (scikit-learn)
"""Offline fitting: cross-validation, intervals, noise, the recommendation search.

The RegMix tests use the real 1M-parameter proxy runs of the RegMix paper (../shared/data/regmix):
512 train runs, 256 held-out test mixtures, target Pile-CC validation loss.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import stats
from sklearn.dummy import DummyRegressor

from mixers.base import DomainSpace
from mixers.fitting import Candidate, Fit, Noise, _fold_of, _replicate_groups, fit_model, predict
from mixers.persistence import FIT_FORMAT, UnreadableFit, dump_fit, load_fit
from mixers.recommendation import DISTINCT_L1, recommend
from mixers.regressors import REGRESSORS, regressor_names
from mixopt.errors import Conflict, InvalidInput
from mixopt.schemas import FitReport
from service.convert import fit_report, recommendation_out
from tests.regmix_data import regmix_splits

FloatArray = NDArray[np.float64]


# --- data ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def regmix() -> dict[str, Any]:
    data = regmix_splits()
    data["result"] = fit_model(
        data["X"], data["y"], data["ids"], names=data["names"], seed=0, model="linear"
    )
    return data


def synthetic_space() -> DomainSpace:
    """Five domains with min/max bounds; "code" is the good one (see ``synthetic_loss``)."""
    return DomainSpace.from_domains(
        [
            {"name": "web", "prior": 0.5, "max_weight": 0.8},
            {"name": "code", "prior": 0.2, "max_weight": 0.4},
            {"name": "books", "prior": 0.15, "min_weight": 0.05},
            {"name": "math", "prior": 0.1},
            {"name": "wiki", "prior": 0.05},
        ]
    )


EFFECT = np.array([0.0, -1.0, 0.2, -0.3, 0.1])  # loss change per unit weight: code helps most


def synthetic_runs(
    space: DomainSpace, n: int, seed: int, noise: float = 0.02
) -> tuple[FloatArray, FloatArray, list[str]]:
    rng = np.random.default_rng(seed)
    X = space.project(rng.dirichlet(np.ones(space.k), size=n))
    y = 3.0 + X @ EFFECT + rng.normal(0.0, noise, size=n)
    return X, y, [f"run-{i}" for i in range(n)]


@pytest.fixture(scope="module")
def synthetic() -> tuple[DomainSpace, Fit]:
    space = synthetic_space()
    X, y, ids = synthetic_runs(space, 64, seed=3)
    return space, fit_model(X, y, ids, model="linear", names=space.names, seed=0)


def assert_mixture(space: DomainSpace, weights: FloatArray) -> FloatArray:
    """Weights over exactly the space's domains, summing to 1 within 1e-9, inside the bounds."""
    w = np.asarray(weights, dtype=float)
    assert w.shape == (space.k,)
    assert abs(w.sum() - 1.0) <= 1e-9
    assert space.contains(w, tol=1e-9).all(), w
    return w


def plain(value: Any) -> Any:
    """A dataclass result as comparable built-in values (arrays as lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def without_seconds(rec: Any) -> dict[str, Any]:
    out: dict[str, Any] = plain(rec)
    del out["search"]["seconds"]
    return out


# --- RegMix: the real proxy runs -----------------------------------------------------------------


def test_linear_cv_on_regmix_ranks_runs_at_spearman_about_0_9(regmix):
    """The linear model's 5-fold CV Spearman on Pile-CC loss is about 0.9 (RegMix: 0.90)."""
    result: Fit = regmix["result"]
    assert result.model == "linear"
    assert result.requested == "linear"
    assert result.n_runs == 512
    assert result.cv.folds == 5
    assert result.cv.spearman is not None and result.cv.pearson is not None
    assert result.cv.r2 is not None and result.cv.mae is not None
    assert 0.85 <= result.cv.spearman <= 0.95
    assert 0.8 <= result.cv.pearson <= 0.95
    assert 0.6 <= result.cv.r2 <= 0.9
    assert 0 < result.cv.mae < 0.2
    assert [c.model for c in result.candidates] == ["linear"]
    assert len(result.oof) == 512
    assert (result.oof[0].run_id, result.oof[0].actual) == (regmix["ids"][0], regmix["y"][0])
    oof = np.array([o.predicted for o in result.oof])
    assert stats.spearmanr(regmix["y"], oof).statistic == pytest.approx(result.cv.spearman)
    assert result.noise == Noise(0, None)  # no two runs share a mixture


def test_linear_ranks_regmix_test_runs_and_intervals_cover_70_to_90_percent(regmix):
    """Fitted on the 512 train runs: ranks the 256 test mixtures, intervals cover ~80 %."""
    value, low, high = predict(regmix["result"], regmix["X_test"])
    y_test = regmix["y_test"]
    assert stats.spearmanr(y_test, value).statistic >= 0.85
    assert np.all(low <= value) and np.all(value <= high)
    coverage = float(np.mean((y_test >= low) & (y_test <= high)))
    assert 0.70 <= coverage <= 0.90


def test_importance_on_regmix_sums_to_one_and_ranks_github_above_enron_emails(regmix):
    importance = regmix["result"].importance
    assert list(importance) == regmix["names"]
    assert sum(importance.values()) == pytest.approx(1.0)
    assert all(v >= 0 for v in importance.values())
    # Domains with the largest weight swings in the swarm dominate; tiny ones barely matter.
    assert importance["github"] > importance["enron_emails"]


def test_recommendation_on_regmix_favours_pile_cc_within_the_trust_region(regmix):
    """RegMix's procedure on the real runs: Pile-CC dominates the recommended mixture."""
    X: FloatArray = regmix["X"]
    space = DomainSpace.from_swarm(regmix["names"], regmix["X"])
    rec = recommend(space, regmix["result"], np.random.default_rng(0))
    w = assert_mixture(space, rec.weights)
    assert space.to_dict(rec.weights)["pile_cc"] > 0.6  # RegMix's own search: 0.87-0.89
    # The trust region: no weight above the largest the runs ever gave that domain.
    assert np.all(w <= X.max(axis=0) + 1e-9)
    assert rec.search.trust_region is True
    assert rec.baseline is not None and rec.p_better_than_baseline is not None
    assert rec.predicted.value < rec.baseline.predicted.value
    assert rec.p_better_than_baseline > 0.9
    assert rec.search.candidates == 100_000
    assert rec.search.top_k == 100
    # Without it, a linear model extrapolates to a vertex no run came near.
    loose = recommend(space, regmix["result"], np.random.default_rng(0), trust_region=False)
    assert np.any(loose.weights > X.max(axis=0) + 0.1)
    assert loose.search.trust_region is False


# --- fit_model -----------------------------------------------------------------------------------


def test_auto_compares_every_registered_regressor(monkeypatch):
    constant = DummyRegressor(strategy="constant", constant=3.0)
    monkeypatch.setitem(REGRESSORS, "mean", lambda seed: constant)
    space = synthetic_space()
    X, y, ids = synthetic_runs(space, 40, seed=1)
    result = fit_model(X, y, ids, names=space.names, seed=0)
    assert [c.model for c in result.candidates] == regressor_names()
    assert {c.model for c in result.candidates} >= {"linear", "mean"}
    scores = {c.model: c.spearman for c in result.candidates}
    assert scores["mean"] is None  # constant predictions have no rank correlation
    ranked = {name: score for name, score in scores.items() if score is not None}
    best = max(ranked, key=ranked.__getitem__)  # the best cross-validated, or tied with it
    assert result.model == best or {best, result.model} <= set(result.tied)
    assert result.cv.spearman == scores[result.model]

    only = fit_model(X, y, ids, model="mean", names=space.names, seed=0)
    assert only.model == only.requested == "mean"
    assert [c.model for c in only.candidates] == ["mean"]
    assert only.cv.spearman is None and only.cv.pearson is None
    assert only.importance == {n: pytest.approx(1 / space.k) for n in space.names}


def test_auto_survives_a_failing_candidate(monkeypatch):
    class Broken(DummyRegressor):  # type: ignore[misc]
        def fit(self, X, y, sample_weight=None):
            raise RuntimeError("boom")

    monkeypatch.setitem(REGRESSORS, "broken", lambda seed: Broken())
    space = synthetic_space()
    X, y, ids = synthetic_runs(space, 20, seed=1)
    result = fit_model(X, y, ids, names=space.names, seed=0)
    scored = {c.model for c in result.candidates if c.spearman is not None}
    assert result.model in scored and "linear" in scored  # the others were still compared
    assert Candidate("broken", None) in result.candidates
    with pytest.raises(RuntimeError, match="boom"):
        fit_model(X, y, ids, model="broken", names=space.names, seed=0)


def test_unknown_model_is_invalid_input():
    space = synthetic_space()
    X, y, ids = synthetic_runs(space, 20, seed=1)
    with pytest.raises(InvalidInput) as info:
        fit_model(X, y, ids, model="xgboost", names=space.names, seed=0)
    assert info.value.errors[0].loc == ("model",)  # relative: the service puts it under "body"
    assert "linear" in info.value.detail and "auto" in info.value.detail


def test_fewer_than_eight_runs_conflict():
    space = synthetic_space()
    X, y, ids = synthetic_runs(space, 8, seed=1)
    with pytest.raises(Conflict, match="fewer than 8 usable runs"):
        fit_model(X[:7], y[:7], ids[:7], names=space.names, seed=0)
    result = fit_model(X, y, ids, names=space.names, seed=0)
    assert result.cv.folds == 5 and result.n_runs == 8
    same = np.repeat(X[:1], 10, axis=0)
    with pytest.raises(Conflict, match="same mixture"):
        fit_model(same, y.repeat(2)[:10], [str(i) for i in range(10)], names=space.names, seed=0)


def test_bad_shapes_are_value_errors():
    space = synthetic_space()
    X, y, ids = synthetic_runs(space, 10, seed=1)
    with pytest.raises(ValueError, match="shape"):
        fit_model(X[:, :3], y, ids, names=space.names, seed=0)
    with pytest.raises(ValueError, match="length"):
        fit_model(X, y[:9], ids, names=space.names, seed=0)
    with pytest.raises(ValueError, match="finite"):
        fit_model(X, np.where(np.arange(10) == 3, np.nan, y), ids, names=space.names, seed=0)


def test_replicates_estimate_the_noise():
    """40 mixtures trained 3 times each, true run-to-run std 0.05."""
    space = synthetic_space()
    rng = np.random.default_rng(7)
    base, _, _ = synthetic_runs(space, 40, seed=2)
    X = np.repeat(base, 3, axis=0)
    X[1::3] += 1e-12  # rounding to 1e-9 still groups them
    y = 3.0 + X @ EFFECT + rng.normal(0.0, 0.05, size=len(X))
    result = fit_model(X, y, [str(i) for i in range(len(X))], names=space.names, seed=0)
    assert result.noise.replicate_groups == 40
    assert result.noise.std == pytest.approx(0.05, rel=0.2)
    # The interval covers the noise: it is at least about +-1.28 noise std wide.
    q_lo, q_hi = result.residual_quantiles
    assert q_hi - q_lo >= 2 * 1.2 * 0.05 * 0.8


def test_replicates_never_straddle_folds():
    X = np.repeat(np.random.default_rng(0).dirichlet(np.ones(3), size=20), 3, axis=0)
    groups = _replicate_groups(X)
    assert groups.max() + 1 == 20
    fold = _fold_of(groups, 5, seed=0)
    for g in range(20):
        assert len(set(fold[groups == g])) == 1
    assert sorted(np.bincount(fold)) == [12] * 5  # balanced
    assert not np.array_equal(fold, _fold_of(groups, 5, seed=1))  # shuffled by the seed


def test_importance_finds_the_effective_domain(synthetic):
    _, result = synthetic
    importance = result.importance
    assert sum(importance.values()) == pytest.approx(1.0)
    assert max(importance, key=importance.__getitem__) == "code"


def test_fit_is_reproducible():
    space = synthetic_space()
    X, y, ids = synthetic_runs(space, 30, seed=4)
    first = fit_model(X, y, ids, names=space.names, seed=11)
    second = fit_model(X, y, ids, names=space.names, seed=11)
    assert first.cv == second.cv
    assert first.oof == second.oof
    assert first.importance == second.importance
    assert first.residual_quantiles == second.residual_quantiles


def test_stored_fit_loads_and_predicts_the_same(regmix):
    result: Fit = regmix["result"]
    again = load_fit(dump_fit(result))
    for a, b in zip(
        predict(result, regmix["X_test"]), predict(again, regmix["X_test"]), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    assert fit_report(again) == fit_report(result)


def test_a_stored_fit_in_another_format_is_refused_unread(regmix):
    data = dump_fit(regmix["result"])
    for stored_format, says in ((None, "pickle"), ("pickle", "pickle"), ("other.v9", "other.v9")):
        with pytest.raises(UnreadableFit, match=says):
            load_fit(data, stored_format)
    with pytest.raises(UnreadableFit, match="not a"):
        load_fit(b"\x80\x04not zlib", FIT_FORMAT)


def test_predict_checks_width(synthetic):
    _, result = synthetic
    with pytest.raises(ValueError, match="columns"):
        predict(result, np.ones((2, 3)) / 3)
    value, low, high = predict(result, np.full(5, 0.2))  # one mixture as a flat array
    assert value.shape == low.shape == high.shape == (1,)


def test_report_and_recommendation_fit_the_wire_shapes(synthetic):
    space, result = synthetic
    report = FitReport.model_validate(
        {**fit_report(result), "id": "fit-1", "fitted_at": datetime.now(UTC)}
    )
    assert report.cv.folds == 5 and len(report.oof) == 64
    assert report.oof[0].run_id == "run-0"
    rec = recommend(space, result, np.random.default_rng(0), candidates=5000)
    wire = recommendation_out(space, rec)
    assert wire.predicted is not None and wire.baseline is not None
    assert wire.model == "linear" and wire.n_runs == 64


# --- recommend -----------------------------------------------------------------------------------


def test_recommendation_beats_the_baseline_within_bounds(synthetic):
    space, result = synthetic
    rec = recommend(space, result, np.random.default_rng(0), candidates=20_000)
    w = assert_mixture(space, rec.weights)
    assert w[1] > 0.3  # code, capped at 0.4, is the domain that lowers the loss
    assert rec.baseline is not None and rec.p_better_than_baseline is not None
    base = assert_mixture(space, rec.baseline.weights)
    np.testing.assert_allclose(base, space.project(space.prior)[0])
    predicted, baseline = rec.predicted, rec.baseline.predicted
    assert predicted.value < baseline.value
    assert predicted.low < predicted.value < predicted.high
    assert rec.p_better_than_baseline > 0.9
    assert rec.params == {} and rec.model == "linear" and rec.n_runs == 64
    assert rec.search.candidates == 20_000 and rec.search.top_k == 100


def test_alternatives_are_distinct_and_near_the_best(synthetic):
    space, result = synthetic
    rec = recommend(space, result, np.random.default_rng(0), candidates=20_000)
    alternatives = rec.alternatives
    assert 1 <= len(alternatives) <= 5
    chosen = [rec.weights]
    sigma = result.interval_sigma
    values = [a.predicted.value for a in alternatives]
    assert values == sorted(values)  # best first
    for alt in alternatives:
        w = assert_mixture(space, alt.weights)
        assert all(np.abs(w - c).sum() > DISTINCT_L1 for c in chosen)
        chosen.append(w)
        assert alt.predicted.value <= min(rec.predicted.value, values[0]) + sigma
        np.testing.assert_allclose(alt.predicted.value, predict(result, w)[0][0])


def test_direction_maximize_flips_the_choice(synthetic):
    space, result = synthetic
    low = recommend(space, result, np.random.default_rng(0), candidates=20_000)
    high = recommend(
        space, result, np.random.default_rng(0), candidates=20_000, direction="maximize"
    )
    assert_mixture(space, high.weights)
    assert space.to_dict(high.weights)["code"] < 0.05 < space.to_dict(low.weights)["code"]
    assert high.baseline is not None and high.p_better_than_baseline is not None
    assert high.predicted.value > high.baseline.predicted.value
    assert high.p_better_than_baseline > 0.9
    assert all(
        a.predicted.value >= high.predicted.value - result.interval_sigma for a in high.alternatives
    )


def test_direction_defaults_to_the_fits():
    space = synthetic_space()
    X, y, ids = synthetic_runs(space, 40, seed=5)
    result = fit_model(X, y, ids, names=space.names, seed=0, direction="maximize")
    rec = recommend(space, result, np.random.default_rng(0), candidates=5000)
    assert rec.baseline is not None
    assert rec.predicted.value > rec.baseline.predicted.value


def test_recommend_is_reproducible_and_takes_a_baseline(synthetic):
    space, result = synthetic
    first = recommend(space, result, np.random.default_rng(5), candidates=10_000, top_k=10)
    second = recommend(space, result, np.random.default_rng(5), candidates=10_000, top_k=10)
    assert without_seconds(first) == without_seconds(second)
    other = recommend(space, result, np.random.default_rng(6), candidates=10_000, top_k=10)
    # (The weights may agree: the best candidates all sit on the same vertex of the bounds.)
    assert without_seconds(other) != without_seconds(first)
    uniform = recommend(
        space, result, np.random.default_rng(5), candidates=100, top_k=500, baseline=np.ones(5)
    )
    assert uniform.search.top_k == 100  # never more than the candidates
    assert uniform.baseline is not None
    assert_mixture(space, uniform.baseline.weights)
    assert space.to_dict(uniform.baseline.weights)["code"] == pytest.approx(0.2)


def test_recommend_refuses_another_space(synthetic):
    _, result = synthetic
    other = DomainSpace.from_domains([{"name": n} for n in ("a", "b", "c", "d", "e")])
    with pytest.raises(ValueError, match="domains"):
        recommend(other, result, np.random.default_rng(0), candidates=10)


def test_search_scores_100k_candidates_by_default(synthetic):
    # Its speed (~0.3 s on one core) is measured by bench/mixers_speed.py.
    space, result = synthetic
    rec = recommend(space, result, np.random.default_rng(0))
    assert rec.search.candidates == 100_000


def test_refining_around_the_best_beats_sampling_alone(regmix):
    """The same number of scored candidates, spent half on refinement, finds a mixture the
    model predicts better: the point of the coarse-to-fine search."""
    space = DomainSpace.from_swarm(regmix["names"], regmix["X"])
    result = regmix["result"]
    values = {
        refine: recommend(space, result, np.random.default_rng(0), candidates=20_000, refine=refine)
        for refine in (False, True)
    }
    assert values[True].search.refine_rounds == 3
    assert values[False].search.refine_rounds == 0
    assert values[True].search.candidates == values[False].search.candidates == 20_000
    better = values[False].predicted.value - values[True].predicted.value
    assert better > 0.002, better  # Pile-CC loss; about 0.01 on this swarm


def test_kl_penalty_pulls_the_recommendation_towards_the_prior(synthetic):
    space, result = synthetic
    prior = space.prior / space.prior.sum()

    def kl(w: FloatArray) -> float:
        return float(np.sum(np.where(w > 0, w * np.log(w / prior), 0.0)))

    free = recommend(space, result, np.random.default_rng(0), candidates=20_000)
    pulled = recommend(space, result, np.random.default_rng(0), candidates=20_000, kl_penalty=10.0)
    assert pulled.search.kl_penalty == 10.0
    assert kl(pulled.weights) < 0.5 * kl(free.weights)
    # The penalty is a ranking device: reported predictions are the model's own.
    assert pulled.predicted.value == pytest.approx(
        float(result.estimator.predict(pulled.weights[None, :])[0])
    )
    assert pulled.predicted.value >= free.predicted.value
    with pytest.raises(ValueError, match="kl_penalty"):
        recommend(space, result, np.random.default_rng(0), candidates=10, kl_penalty=-1.0)


# --- the batched projection ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "domains",
    [
        [{"name": f"d{i}"} for i in range(17)],
        [
            {"name": "web", "tokens": 500e9, "max_weight": 0.7},
            {"name": "code", "tokens": 100e9},
            {"name": "books", "tokens": 20e9, "min_weight": 0.05},
            {"name": "math", "tokens": 5e9},
            {"name": "wiki", "tokens": 1e9},
        ],
        [{"name": f"d{i}", "min_weight": 0.005, "max_weight": 0.3} for i in range(17)],
        [
            {"name": "a", "min_weight": 0.47, "max_weight": 0.5},
            {"name": "b"},
            {"name": "c", "max_weight": 0.01},
        ],
    ],
)
def test_exact_projection_matches_the_bisection(domains):
    space = DomainSpace.from_domains(domains, train_tokens=100e9, max_epochs=4)
    rng = np.random.default_rng(0)
    v = np.vstack([rng.dirichlet(np.full(space.k, a), size=300) for a in (0.01, 0.1, 1.0, 10.0)])
    v[:20] = 0.0
    v[:20, 0] = 1.0  # vertices
    v[20:40] *= 7.0  # not normalised
    v[40:60, 1:] *= 1e-200  # extreme ranges
    fast = space.project(v)
    assert space.contains(fast, tol=1e-12).all()
    np.testing.assert_allclose(fast, space._project_by_bisection(v), atol=1e-12)


def test_search_time_budget_caps_the_candidates(synthetic):
    space, result = synthetic
    rec = recommend(space, result, np.random.default_rng(0), max_seconds=1e-9)
    assert rec.search.candidates == 8192  # one chunk: the budget is spent after it
    assert_mixture(space, rec.weights)
    full = recommend(space, result, np.random.default_rng(0), max_seconds=60)
    assert full.search.candidates == 100_000
