"""The sequential offline methods ``rounds`` (CLIMB-style) and ``bayes`` (batch BO with a GP).

The Must-show (``test_sequential_methods_close_95_percent_of_the_gap``): on the Data-Mixing-Law
simulator (``simulator.py``; K = 5, 10, 17; seeds 0-2), 4 batches of 32 runs, each observed
before the next, then ``fit_model`` + ``recommend``: the best sequential method closes at least
95 % of the gap between the uniform mixture and the optimum on average, and both beat RegMix's
one-shot design of 128 runs with LightGBM. Measured (gap closure, mean over the 3 seeds; with
a quarter of every fitted batch exploring, ``explore`` 0.25, and the best run competing with
the searched mixture):

=================  =====  =====  =====  =====
method + model     K=5    K=10   K=17   mean
=================  =====  =====  =====  =====
regmix + lightgbm  0.68   0.24   0.77   0.56
rounds + gp        0.99   0.93   0.92   0.95
bayes + gp         0.99   0.98   0.97   0.98
=================  =====  =====  =====  =====

Without exploration or the contest: rounds 0.94, bayes 0.94.

(Optuna's TPE, multivariate with a constant liar over a stick-breaking parametrisation and the
history replayed into an in-memory study, scored 0.88 with the same GP recommendation, its best
runs only 0.55-0.9: not kept.)
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from mixers import offline_method
from mixers.base import DomainSpace, Observation
from mixers.fitting import usable_runs
from mixers.offline._sequential import explore_rows
from mixers.offline.base import OfflineMixer
from mixers.offline.bayes import (
    BayesConfig,
    BayesMixer,
    expected_improvement,
    local_penalisation,
)
from mixers.offline.regmix import RegMixMixer
from mixers.offline.rounds import RoundsConfig, RoundsMixer, current_round
from mixers.testing import assert_valid_mixtures, check_offline_mixer, generic_space
from mixopt.errors import InvalidInput
from tests.mixers.simulator import Outcome, make_simulator, run_method

METHODS: list[type[OfflineMixer[Any]]] = [RoundsMixer, BayesMixer]
ids = [m.name for m in METHODS]


def mixer(cls: type[OfflineMixer[Any]], **config: Any) -> OfflineMixer[Any]:
    return cls.from_config(config)


def weights(proposals: list[Any]) -> np.ndarray:
    return np.array([p.weights for p in proposals])


def quadratic_target(space: DomainSpace) -> np.ndarray:
    return space.project(np.linspace(1.0, 2.0, space.k))[0]


def quadratic_history(
    space: DomainSpace, n: int, seed: int, *, failed: int = 0, sign: float = 1.0
) -> list[Observation]:
    """``n`` runs of RegMix's design with the objective ``sign * |w - target|^2``; the first
    ``failed`` of them failed."""
    rows = weights(mixer(RegMixMixer).propose(space, [], n, np.random.default_rng(seed)))
    target = quadratic_target(space)
    return [
        Observation(
            weights=row,
            objective=None if i < failed else sign * float(np.sum((row - target) ** 2)),
            status="failed" if i < failed else "completed",
        )
        for i, row in enumerate(rows)
    ]


# --- conformance and guarantees -----------------------------------------------------------------


@pytest.mark.parametrize("cls", METHODS, ids=ids)
def test_passes_the_conformance_check(cls: type[OfflineMixer[Any]]) -> None:
    check_offline_mixer(cls, {"seed": 1}, generic_space())
    # Also in an unbounded space with a skewed prior, and with the fit path's settings.
    check_offline_mixer(cls, {"seed": 1}, make_simulator(5, 0).space())


@pytest.mark.parametrize("cls", METHODS, ids=ids)
def test_fitted_proposals_are_valid_new_and_reproducible(cls: type[OfflineMixer[Any]]) -> None:
    space = generic_space()  # caps, a min_weight and a max_weight
    history = quadratic_history(space, 70, 0, failed=3)
    method = mixer(cls)
    proposals = method.propose(space, history, 16, np.random.default_rng(5))
    assert_valid_mixtures(space, proposals, 16)
    rows = weights(proposals)
    old = np.array([obs.weights for obs in history])
    assert cdist(rows, old, "cityblock").min() > 1e-5
    within = cdist(rows, rows, "cityblock")
    np.fill_diagonal(within, np.inf)
    assert within.min() > 1e-5
    again = mixer(cls).propose(space, history, 16, np.random.default_rng(5))
    np.testing.assert_array_equal(rows, weights(again))
    other = method.propose(space, history, 16, np.random.default_rng(6))
    assert not np.array_equal(rows, weights(other))


@pytest.mark.parametrize("cls", METHODS, ids=ids)
@pytest.mark.parametrize("count", [1, 3])
def test_proposes_valid_small_batches_after_the_design(
    cls: type[OfflineMixer[Any]], count: int
) -> None:
    space = generic_space()
    history = quadratic_history(space, 70, 1)
    proposals = mixer(cls).propose(space, history, count, np.random.default_rng(0))
    assert_valid_mixtures(space, proposals, count)


@pytest.mark.parametrize("cls", METHODS, ids=ids)
def test_the_first_batch_is_regmix_design(cls: type[OfflineMixer[Any]]) -> None:
    space = generic_space()
    ours = mixer(cls).propose(space, [], 32, np.random.default_rng(3))
    theirs = mixer(RegMixMixer).propose(space, [], 32, np.random.default_rng(3))
    np.testing.assert_array_equal(weights(ours), weights(theirs))


@pytest.mark.parametrize("cls", METHODS, ids=ids)
def test_falls_back_to_the_design_with_fewer_than_8_finished_runs(
    cls: type[OfflineMixer[Any]],
) -> None:
    space = generic_space()
    # 70 runs, past the first round, but only 7 finished (the rest failed or were excluded).
    history = quadratic_history(space, 70, 2, failed=61)
    history[-3] = Observation(weights=history[-3].weights, objective=1.0, excluded=True)
    history[-2] = Observation(weights=history[-2].weights, objective=float("nan"))
    assert len(usable_runs(history, space.k, minimum=0).y) == 7
    ours = mixer(cls).propose(space, history, 8, np.random.default_rng(4))
    theirs = mixer(RegMixMixer).propose(space, history, 8, np.random.default_rng(4))
    np.testing.assert_array_equal(weights(ours), weights(theirs))


def test_usable_runs_are_completed_not_excluded_and_finite() -> None:
    w = np.array([0.5, 0.5])
    history = [
        Observation(weights=w, objective=1.0),
        Observation(weights=w, objective=None, status="failed"),
        Observation(weights=w, objective=2.0, excluded=True),
        Observation(weights=w, objective=float("inf")),
        Observation(weights=w, objective=3.0, status="running"),
        Observation(weights=w, objective=4.0),
    ]
    usable = usable_runs(history, 2, minimum=0)
    assert usable.X.shape == (2, 2)
    np.testing.assert_array_equal(usable.y, [1.0, 4.0])


@pytest.mark.parametrize("cls", METHODS, ids=ids)
@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_later_batches_move_towards_the_better_direction(
    cls: type[OfflineMixer[Any]], direction: str
) -> None:
    # The objective is the squared distance to a target (or its negative, to be maximised):
    # after the design, proposals land much closer to the target than the design's runs.
    space = make_simulator(5, 0).space()
    sign = 1.0 if direction == "minimize" else -1.0
    history = quadratic_history(space, 64, 0, sign=sign)
    proposals = mixer(cls, direction=direction).propose(
        space, history, 32, np.random.default_rng(0)
    )
    before = np.median([sign * obs.objective for obs in history if obs.objective is not None])
    target = space.project(np.linspace(1.0, 2.0, space.k))[0]
    after = np.sum((weights(proposals) - target) ** 2, axis=1)
    assert np.median(after) < 0.25 * before


# --- rounds -------------------------------------------------------------------------------------


def test_current_round_counts_the_runs_so_far() -> None:
    rounds = [64, 32, 32]
    assert [current_round(rounds, n) for n in (0, 63, 64, 95, 96, 127, 128, 500)] == [
        0,
        0,
        1,
        1,
        2,
        2,
        2,
        2,
    ]
    assert current_round([10], 0) == current_round([10], 50) == 0


def test_rounds_neighbourhood_shrinks_round_by_round() -> None:
    space = make_simulator(5, 0).space()
    history = quadratic_history(space, 64, 0)
    method = mixer(RoundsMixer, rounds=[64, 32, 32, 32])
    spreads = []
    for extra in (0, 32, 64):  # history lengths 64, 96, 128: rounds 2, 3 and 4
        padded = history + [
            Observation(weights=obs.weights, objective=None, status="failed")
            for obs in history[:extra]
        ]
        rows = weights(method.propose(space, padded, 32, np.random.default_rng(0)))
        spreads.append(np.abs(rows - rows.mean(axis=0)).sum(axis=1).mean())
    assert spreads[0] > spreads[1] > spreads[2], spreads


def test_rounds_config_defaults_to_gp_rounds_and_locates_each_bad_field() -> None:
    config = RoundsMixer.parse_config({})
    assert isinstance(config, RoundsConfig)
    assert config.rounds == [64, 32, 32] and config.model == "gp"
    assert config.direction == "minimize"
    bads: list[dict[str, Any]] = [
        {"rounds": []},
        {"rounds": [64, 0]},
        {"model": "forest"},
        {"direction": "up"},
        {"growth": 0.5},
    ]
    for bad in bads:
        with pytest.raises(InvalidInput) as exc:
            RoundsMixer.parse_config(bad)
        assert [e.loc[:2] for e in exc.value.errors] == [("config", next(iter(bad)))], bad
    assert RoundsMixer.parse_config({"model": "auto"}).model == "auto"  # type: ignore[attr-defined]


@pytest.mark.parametrize("model", ["linear", "auto"])
def test_rounds_proposes_valid_mixtures_with_linear_or_auto_models(model: str) -> None:
    space = generic_space()
    history = quadratic_history(space, 70, 3)
    proposals = mixer(RoundsMixer, model=model).propose(space, history, 8, np.random.default_rng(0))
    assert_valid_mixtures(space, proposals, 8)


# --- exploration ---------------------------------------------------------------------------------


def test_explore_rows_lie_farther_from_the_runs_than_uniform_draws() -> None:
    space = generic_space()
    existing = weights(mixer(RegMixMixer).propose(space, [], 48, np.random.default_rng(0)))
    rows = explore_rows(space, existing, 8, np.random.default_rng(1))
    assert rows.shape == (8, space.k)
    assert bool(np.all(space.contains(rows)))
    uniform = space.project(np.random.default_rng(2).dirichlet(np.ones(space.k), 8))
    nearest = cdist(rows, existing, "cityblock").min(axis=1)
    assert nearest.min() > np.median(cdist(uniform, existing, "cityblock").min(axis=1))
    # ... and from each other: greedy maximin never picks two close together.
    pairwise = cdist(rows, rows, "cityblock")[np.triu_indices(8, 1)]
    assert pairwise.min() > 0.1
    assert explore_rows(space, existing, 0, np.random.default_rng(1)).shape == (0, space.k)


@pytest.mark.parametrize("cls", METHODS, ids=ids)
def test_a_fitted_batch_spends_its_explore_share_on_spread_mixtures(
    cls: type[OfflineMixer[Any]],
) -> None:
    space = generic_space()
    history = quadratic_history(space, 64, 3)
    existing = weights([*history])
    everything = mixer(cls, explore=1.0).propose(space, history, 6, np.random.default_rng(4))
    # Exploration draws first from the call's generator: with a share of 1 it is the batch.
    expected = explore_rows(space, existing, 6, np.random.default_rng(4))
    np.testing.assert_allclose(weights(everything), expected)
    # A quarter (rounded up) of 6 is 2: the batch's last two rows are the spread ones.
    mixed = weights(mixer(cls).propose(space, history, 6, np.random.default_rng(4)))
    np.testing.assert_allclose(
        mixed[4:], explore_rows(space, existing, 2, np.random.default_rng(4))
    )
    none = weights(mixer(cls, explore=0.0).propose(space, history, 6, np.random.default_rng(4)))
    focus = ((none - quadratic_target(space)) ** 2).sum(axis=1)
    spread = ((mixed[4:] - quadratic_target(space)) ** 2).sum(axis=1)
    assert spread.min() > np.median(focus)  # the optimised rows go where the model points
    for bad in (-0.1, 1.5):
        with pytest.raises(InvalidInput) as exc:
            cls.parse_config({"explore": bad})
        assert [e.loc[:2] for e in exc.value.errors] == [("config", "explore")]


# --- bayes --------------------------------------------------------------------------------------


def test_expected_improvement_matches_the_closed_form_for_minimisation() -> None:
    mean = np.array([1.0, 1.0, 2.0, 0.5])
    std = np.array([0.0, 1.0, 1.0, 0.0])
    ei = expected_improvement(mean, std, best=1.0, xi=0.0)
    assert ei[0] == pytest.approx(0.0)
    assert ei[1] == pytest.approx(1 / np.sqrt(2 * np.pi))  # std * pdf(0)
    assert 0 < ei[2] < ei[1]
    assert ei[3] == pytest.approx(0.5)


def test_local_penalisation_spreads_the_batch() -> None:
    # Two equally good bumps: without the penalty the batch would crowd around one of them.
    grid = np.linspace(0.0, 1.0, 201)
    candidates = np.column_stack([grid, 1 - grid])
    acquisition = np.exp(-((grid - 0.2) ** 2) / 0.01) + np.exp(-((grid - 0.8) ** 2) / 0.01)
    mean = -acquisition
    std = np.full_like(grid, 0.05)
    picked = local_penalisation(candidates, acquisition, mean, std, -1.0, 5.0, 2)
    assert len(set(picked)) == 2
    assert sorted(np.round(grid[picked], 1)) == [0.2, 0.8]


def test_bayes_config_defaults_to_gp_and_32_initial_runs_and_locates_bad_fields() -> None:
    config = BayesMixer.parse_config({})
    assert isinstance(config, BayesConfig)
    assert config.model == "gp" and config.initial_runs == 32
    bads: list[dict[str, Any]] = [
        {"model": "lightgbm"},
        {"model": "auto"},
        {"model": "forest"},
        {"xi": -1},
    ]
    for bad in bads:
        with pytest.raises(InvalidInput) as exc:
            BayesMixer.parse_config(bad)
        assert [e.loc[:2] for e in exc.value.errors] == [("config", next(iter(bad)))], bad


def test_bayes_proposes_the_regmix_design_until_initial_runs() -> None:
    space = generic_space()
    history = quadratic_history(space, 40, 0)
    ours = mixer(BayesMixer, initial_runs=64).propose(space, history, 8, np.random.default_rng(1))
    theirs = mixer(RegMixMixer).propose(space, history, 8, np.random.default_rng(1))
    np.testing.assert_array_equal(weights(ours), weights(theirs))


# --- the Must-show: gap closure on the simulator ------------------------------------------------


@cache
def outcome(name: str, model: str, k: int, seed: int) -> Outcome:
    instance = offline_method(name).from_config({})
    return run_method(make_simulator(k, seed), instance, seed, model=model)


@pytest.mark.parametrize("name", ["rounds", "bayes"])
def test_sequential_method_closes_most_of_the_gap_on_one_instance(name: str) -> None:
    # The fast version of the Must-show: K = 10, one seed (measured 0.94 and 0.97).
    result = outcome(name, "gp", 10, 1)
    assert result.weights.shape == (128, 10)
    assert result.gap_closure >= 0.85, result.gap_closure
    assert result.best_run_gap_closure >= 0.85, result.best_run_gap_closure


@pytest.mark.slow
def test_sequential_methods_close_95_percent_of_the_gap() -> None:
    ks, seeds = (5, 10, 17), (0, 1, 2)
    methods = [("regmix", "lightgbm"), ("rounds", "gp"), ("bayes", "gp")]
    table = {
        method: np.array([[outcome(*method, k, s).gap_closure for s in seeds] for k in ks])
        for method in methods
    }
    for (name, model), values in table.items():
        per_k = ", ".join(f"K={k}: {v:.3f}" for k, v in zip(ks, values.mean(axis=1), strict=True))
        print(f"{name} + {model}: {per_k}, mean {values.mean():.3f}")
    means = {method: float(values.mean()) for method, values in table.items()}
    assert max(means[("rounds", "gp")], means[("bayes", "gp")]) >= 0.95, means
    # Both beat the one-shot design, on average and for every K.
    for method in [("rounds", "gp"), ("bayes", "gp")]:
        assert means[method] > means[("regmix", "lightgbm")] + 0.2, means
        assert np.all(table[method].mean(axis=1) > table[("regmix", "lightgbm")].mean(axis=1))
