"""Offline designs: RegMix's proxy-run design, the fixed method, and the method registry."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from scipy.spatial.distance import cdist

from mixers import Mixer, Observation, OfflineMixer, get_method, methods, register, registry
from mixers.base import DomainSpace
from mixers.offline.fixed import FixedMixer
from mixers.offline.regmix import RegMixConfig, RegMixMixer, dirichlet_design
from mixers.registry import offline_methods
from mixers.testing import assert_valid_mixtures, check_offline_mixer, generic_space
from mixopt.errors import InvalidInput

FloatArray = NDArray[np.float64]
PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHARE = 1e-3  # the tiny-domain guarantee: a share of at least this in some proposal


GENERIC_WEIGHTS = {"web": 0.5, "code": 0.25, "books": 0.15, "math": 0.07, "wiki": 0.03}
EXAMPLE_CONFIGS: dict[str, dict[str, Any]] = {
    "fixed": {"weights": GENERIC_WEIGHTS},
    "quadmix": {"quality_scores": ["s1"]},
}
"""Methods whose config has required keys; every other method must accept ``{}``."""


def l1_distances(a: FloatArray, b: FloatArray) -> FloatArray:
    return cdist(a, b, "cityblock")


def assert_pairwise_distinct(rows: FloatArray, tol: float = 1e-5) -> None:
    d = l1_distances(rows, rows)
    np.fill_diagonal(d, np.inf)
    assert d.min(initial=np.inf) > tol


def space_from(
    prior: FloatArray, lower: FloatArray, upper: FloatArray, **kwargs: Any
) -> DomainSpace:
    return DomainSpace.from_domains(
        [
            {
                "name": f"d{i}",
                "prior": float(prior[i]),
                "min_weight": float(lower[i]),
                "max_weight": float(max(upper[i], lower[i])),
            }
            for i in range(len(prior))
        ],
        **kwargs,
    )


@st.composite
def bounds_with_room(
    draw: st.DrawFn, k: int, width: float = 0.05, total: float = 1.2
) -> tuple[FloatArray, FloatArray]:
    """Feasible min/max bounds where every domain may move by ``width`` at least and the upper
    bounds sum to ``total`` or more: room for many distinct mixtures (a space that is a single
    point cannot honour a count)."""
    unit = st.floats(0, 1)
    share = np.array(draw(st.lists(st.one_of(st.just(0.0), unit), min_size=k, max_size=k)))
    lower_total = draw(st.floats(0, 0.5))
    lower = lower_total * share / share.sum() if share.sum() > 0 else np.zeros(k)
    reach = np.array(draw(st.lists(st.one_of(st.just(1.0), unit), min_size=k, max_size=k)))
    upper = np.clip(lower + reach * (1 - lower), lower + width, 1.0)
    if upper.sum() < total:
        gap = 1 - upper
        upper = np.minimum(upper + (total - upper.sum()) * gap / gap.sum(), 1.0)
    return lower, upper


@st.composite
def design_spaces(draw: st.DrawFn, k_max: int = 20) -> DomainSpace:
    """K domains, priors over 4 orders of magnitude, feasible min/max bounds with some room."""
    k = draw(st.integers(2, k_max))
    prior = 10.0 ** np.array(draw(st.lists(st.floats(-4, 0), min_size=k, max_size=k)))
    lower, upper = draw(bounds_with_room(k))
    return space_from(prior, lower, upper)


def regmix(**config: Any) -> RegMixMixer:
    return RegMixMixer.from_config(config)


def design(space: DomainSpace, count: int, seed: int, **config: Any) -> FloatArray:
    proposals = regmix(**config).propose(space, [], count, np.random.default_rng(seed))
    return np.array([p.weights for p in proposals]).reshape(-1, space.k)


# --- regmix: validity --------------------------------------------------------------------------


@given(design_spaces(), st.integers(1, 40), st.integers(0, 2**32 - 1))
@PROPERTY
def test_regmix_proposals_are_distinct_mixtures_within_bounds(
    space: DomainSpace, count: int, seed: int
) -> None:
    proposals = regmix().propose(space, [], count, np.random.default_rng(seed))
    assert_valid_mixtures(space, proposals, count)
    rows = np.array([p.weights for p in proposals])
    assert np.all(rows >= space.lower) and np.all(rows <= space.upper)
    assert_pairwise_distinct(rows)


@given(design_spaces(), st.integers(0, 2**32 - 1))
@PROPERTY
def test_regmix_proposals_are_new_relative_to_the_history(space: DomainSpace, seed: int) -> None:
    mixer = regmix()
    first = mixer.propose(space, [], 16, np.random.default_rng(seed))
    history = [Observation(weights=p.weights, objective=1.0) for p in first]
    # The same random state: the design draws the same samples again and must discard them.
    second = mixer.propose(space, history, 16, np.random.default_rng(seed))
    assert_valid_mixtures(space, second, 16)
    old = np.array([p.weights for p in first])
    new = np.array([p.weights for p in second])
    assert l1_distances(new, old).min() > 1e-5
    assert_pairwise_distinct(new)


@given(st.integers(2, 6), st.data())
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_regmix_honours_the_count_in_narrow_spaces(k: int, data: st.DataObject) -> None:
    prior = 10.0 ** np.array(data.draw(st.lists(st.floats(-4, 0), min_size=k, max_size=k)))
    lower, upper = data.draw(bounds_with_room(k, width=0.01, total=1.02))
    space = space_from(prior, lower, upper)
    rows = design(space, 64, data.draw(st.integers(0, 2**32 - 1)))
    assert rows.shape == (64, k)
    assert space.contains(rows).all()
    assert_pairwise_distinct(rows)


def test_regmix_honours_the_count_when_the_prior_lies_outside_the_bounds() -> None:
    # Regression: nearly every sample projected onto the vertex (0.8, 0.2): 5 of 32 came back.
    space = space_from(np.array([2e-5, 1.0]), np.zeros(2), np.array([1.0, 0.2]))
    rows = design(space, 32, 0)
    assert rows.shape == (32, 2)
    assert space.contains(rows).all()
    assert_pairwise_distinct(rows)


def test_regmix_honours_the_count_in_a_narrow_band() -> None:
    # Regression: d1 within [0.4677, 0.4963] gave 95 of 100, d0 within [0.391, 0.401] 29 of 100.
    for prior, lower, upper in [
        ([0.0952, 0.9048], [0.0014, 0.4677], [0.8309, 0.4963]),
        ([0.99991, 8.5e-5], [0.3913, 0.0513], [0.4013, 0.9652]),
    ]:
        space = space_from(np.array(prior), np.array(lower), np.array(upper))
        rows = design(space, 100, 0, temperature=1.0, min_share=0.0)
        assert rows.shape == (100, 2)
        assert space.contains(rows).all()
        assert_pairwise_distinct(rows)


def test_regmix_design_returns_what_a_single_point_space_holds() -> None:
    space = space_from(np.array([0.5, 0.5]), np.array([0.3, 0.0]), np.array([0.3, 0.7]))
    rows = design(space, 8, 0)
    np.testing.assert_allclose(rows, [[0.3, 0.7]])  # one mixture: no other is distinct


def test_regmix_design_avoids_existing_rows_passed_directly() -> None:
    space = generic_space()
    existing = dirichlet_design(space, 50, np.random.default_rng(3))
    fresh = dirichlet_design(space, 50, np.random.default_rng(3), existing=existing)
    assert fresh.shape == (50, space.k)
    assert l1_distances(fresh, existing).min() > 1e-5


def test_regmix_respects_repetition_caps_and_min_weights() -> None:
    space = generic_space()  # web <= 0.7, books >= 0.05, math <= 0.2, wiki <= 0.04
    for seed in range(5):
        rows = design(space, 64, seed)
        assert space.contains(rows).all()
        assert np.all(rows <= space.upper) and np.all(rows >= space.lower)
    np.testing.assert_allclose(space.upper, [0.7, 1.0, 0.8, 0.2, 0.04])


# --- regmix: randomness and counts -------------------------------------------------------------


def test_regmix_is_reproducible_for_a_seed_and_differs_across_seeds() -> None:
    space = generic_space()
    np.testing.assert_array_equal(design(space, 20, 7), design(space, 20, 7))
    other = design(space, 20, 8)
    assert not np.array_equal(design(space, 20, 7), other)
    assert l1_distances(design(space, 20, 7), other).min() > 1e-5


@pytest.mark.parametrize("count", [1, 2, 32])
def test_regmix_honours_small_counts(count: int) -> None:
    space = generic_space()
    proposals = regmix().propose(space, [], count, np.random.default_rng(0))
    assert_valid_mixtures(space, proposals, count)


def test_regmix_designs_1000_distinct_mixtures_over_20_skewed_domains() -> None:
    # Its speed (well under 3 s) is measured by bench/mixers_speed.py.
    space = DomainSpace.from_domains(
        [{"name": f"d{i}", "prior": 10.0 ** -(i / 5)} for i in range(20)]
    )
    rows = design(space, 1000, 0)
    assert rows.shape == (1000, 20)
    assert space.contains(rows).all()
    assert_pairwise_distinct(rows)


# --- regmix: coverage and temperature ----------------------------------------------------------


@st.composite
def spaces_with_tiny_domains(draw: st.DrawFn) -> DomainSpace:
    """Some domains have a prior of 1e-5, and some of those an upper bound (a repetition cap,
    say) just above 1e-3."""
    space = draw(design_spaces())
    tiny = draw(st.lists(st.integers(0, space.k - 1), min_size=1, max_size=max(1, space.k // 2)))
    prior, lower, upper = space.prior.copy(), space.lower.copy(), space.upper.copy()
    prior[tiny] = 1e-5
    capped = upper.copy()
    for i in tiny:
        cap = draw(st.one_of(st.none(), st.floats(SHARE, 10 * SHARE)))
        if cap is not None:
            capped[i], lower[i] = cap, min(lower[i], cap)
    return space_from(prior, lower, capped if capped.sum() >= 1.1 else upper)


@given(spaces_with_tiny_domains(), st.integers(0, 2**32 - 1))
@PROPERTY
def test_regmix_gives_every_trainable_domain_a_real_share_in_a_batch_of_32(
    space: DomainSpace, seed: int
) -> None:
    rows = design(space, 32, seed)
    assert rows.shape == (32, space.k)
    assert space.contains(rows).all()
    trainable = space.upper >= SHARE
    covered = rows.max(axis=0) >= SHARE * (1 - 1e-12)  # a cap of exactly 1e-3, up to rounding
    assert np.all(covered[trainable]), [
        space.names[i] for i in np.flatnonzero(trainable & ~covered)
    ]


def test_regmix_covers_a_domain_with_prior_1e_5() -> None:
    names = ["web", "code", "books", "math", "rare"]
    space = DomainSpace.from_domains(
        [
            {"name": n, "prior": p}
            for n, p in zip(names, [0.6, 0.3, 0.09, 0.00999, 1e-5], strict=True)
        ]
    )
    for seed in range(10):
        rows = design(space, 32, seed)
        assert rows[:, 4].max() >= SHARE


def test_regmix_covers_a_tiny_domain_capped_just_above_the_share() -> None:
    # Regression: a cap between 1e-3 and the floor max(10 * min_share, 1e-3) = 2e-3 was skipped.
    space = DomainSpace.from_domains(
        [
            {"name": "web", "tokens": 1000e9},
            {"name": "code", "tokens": 200e9},
            {"name": "rare", "tokens": 0.015e9},  # prior 1.2e-5, cap 10 * 0.015 / 100 = 1.5e-3
        ],
        train_tokens=100e9,
        max_epochs=10,
    )
    assert 1e-3 < space.upper[2] < 2e-3
    for seed in range(5):
        rows = design(space, 32, seed)
        assert rows[:, 2].max() >= SHARE
        assert np.all(rows[:, 2] <= space.upper[2])


def test_lower_temperature_flattens_the_design() -> None:
    space = DomainSpace.from_domains(
        [{"name": f"d{i}", "prior": p} for i, p in enumerate([0.7, 0.15, 0.08, 0.05, 0.02])]
    )
    means = [design(space, 400, 0, temperature=t)[:, 0].mean() for t in (1.0, 0.6, 0.3, 0.1)]
    assert all(a > b for a, b in itertools.pairwise(means)), means
    assert means[0] > 0.5 > means[-1]


# --- regmix: config ----------------------------------------------------------------------------


def test_regmix_config_rejects_unknown_keys() -> None:
    with pytest.raises(InvalidInput) as exc:
        RegMixMixer.parse_config({"temprature": 0.3})
    assert [e.loc for e in exc.value.errors] == [("config", "temprature")]


def test_regmix_config_rejects_min_strength_above_max_strength() -> None:
    with pytest.raises(InvalidInput) as exc:
        RegMixMixer.parse_config({"min_strength": 2.0, "max_strength": 1.0})
    assert exc.value.errors[0].loc[0] == "config"
    assert "min_strength" in exc.value.errors[0].msg
    config = RegMixMixer.parse_config({"min_strength": 1.0, "max_strength": 1.0})
    assert isinstance(config, RegMixConfig) and config.min_strength == config.max_strength


@pytest.mark.parametrize(
    "bad",
    [{"temperature": 0}, {"temperature": 1.5}, {"strengths": 0}, {"max_prior_multiple": 1}],
    ids=["temperature-0", "temperature-1.5", "strengths-0", "multiple-1"],
)
def test_regmix_config_rejects_out_of_range_values(bad: dict[str, float]) -> None:
    with pytest.raises(InvalidInput) as exc:
        RegMixMixer.parse_config(bad)
    assert [e.loc for e in exc.value.errors] == [("config", *bad)]


# --- fixed -------------------------------------------------------------------------------------


def fixed(weights: dict[str, float]) -> FixedMixer:
    return FixedMixer.from_config({"weights": weights})


@pytest.mark.parametrize("count", [1, 5])
def test_fixed_proposes_its_weights_every_time(count: int) -> None:
    space = generic_space()
    shuffled = dict(reversed(list(GENERIC_WEIGHTS.items())))
    mixer = fixed(shuffled)
    mixer.check_space(space)
    proposals = mixer.propose(space, [], count, np.random.default_rng(0))
    assert_valid_mixtures(space, proposals, count)
    for p in proposals:
        assert space.to_dict(p.weights) == GENERIC_WEIGHTS
        np.testing.assert_array_equal(p.weights, [0.5, 0.25, 0.15, 0.07, 0.03])
    proposals[0].weights[0] = 0.0  # each proposal is a copy of its own
    assert all(p.weights[0] == 0.5 for p in proposals[1:])


@pytest.mark.parametrize(
    ("weights", "loc"),
    [
        ({**GENERIC_WEIGHTS, "web": 0.6}, ("config", "weights")),  # sums to 1.1
        ({**GENERIC_WEIGHTS, "books2": 0.0}, ("config", "weights", "books2")),
        ({k: v for k, v in GENERIC_WEIGHTS.items() if k != "wiki"}, ("config", "weights")),
        ({**GENERIC_WEIGHTS, "web": 0.8, "code": -0.05}, ("config", "weights", "code")),
        ({**GENERIC_WEIGHTS, "web": 0.75, "code": 0.0}, ("config", "weights", "web")),  # > 0.7
        ({**GENERIC_WEIGHTS, "wiki": 0.06, "code": 0.22}, ("config", "weights", "wiki")),  # cap
        ({**GENERIC_WEIGHTS, "books": 0.0, "code": 0.4}, ("config", "weights", "books")),  # min
    ],
    ids=["sum", "unknown", "missing", "negative", "max_weight", "repetition-cap", "min_weight"],
)
def test_fixed_check_space_rejects_weights_that_do_not_fit(
    weights: dict[str, float], loc: tuple[str, ...]
) -> None:
    with pytest.raises(InvalidInput) as exc:
        fixed(weights).check_space(generic_space())
    assert [e.loc for e in exc.value.errors] == [loc]


def test_fixed_config_requires_weights() -> None:
    with pytest.raises(InvalidInput) as exc:
        FixedMixer.parse_config({"seed": 1})
    assert [e.loc for e in exc.value.errors] == [("config", "weights")]


# --- registry and the conformance suite --------------------------------------------------------


def test_registry_lists_the_builtin_offline_methods() -> None:
    listed = {(m.mode, m.name) for m in methods()}
    assert {("offline", "regmix"), ("offline", "fixed")} <= listed
    assert get_method("offline", "regmix") is RegMixMixer
    assert get_method("offline", "fixed") is FixedMixer
    keys = [(m.mode, m.name) for m in methods()]
    assert keys == sorted(keys)  # offline first, then by name


@pytest.mark.parametrize(("mode", "name"), [("offline", "nope"), ("online", "regmix")])
def test_get_method_raises_key_error_for_unknown_names(mode: Any, name: str) -> None:
    with pytest.raises(KeyError):
        get_method(mode, name)


def test_registering_another_class_under_a_taken_name_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry, "_OFFLINE", dict(registry._OFFLINE))
    methods()  # load the built-in methods into the copy
    assert register(RegMixMixer) is RegMixMixer  # registering the same class again is a no-op

    class Impostor(RegMixMixer):
        pass

    with pytest.raises(ValueError, match="registered twice"):
        register(Impostor)


@pytest.mark.parametrize("method", methods(), ids=lambda m: f"{m.mode}-{m.name}")
def test_every_method_config_has_a_documented_strict_json_schema(
    method: type[Mixer[Any]],
) -> None:
    schema = method.Config.model_json_schema()
    assert schema["type"] == "object"
    assert schema.get("additionalProperties") is False
    required = set(schema.get("required", []))
    for key, prop in schema["properties"].items():
        assert "description" in prop, f"{method.name}: config key {key!r} has no description"
        assert key in required or "default" in prop, f"{method.name}: {key!r} has no default"
    example = EXAMPLE_CONFIGS.get(method.name, {})
    method.parse_config(example)
    with pytest.raises(InvalidInput) as exc:
        method.parse_config({**example, "no_such_key": 1})
    assert [e.loc for e in exc.value.errors] == [("config", "no_such_key")]


OFFLINE = offline_methods()


@pytest.mark.parametrize("method", OFFLINE, ids=lambda m: m.name)
def test_every_offline_method_passes_the_conformance_check(
    method: type[OfflineMixer[Any]],
) -> None:
    check_offline_mixer(
        method, {"seed": 1, **EXAMPLE_CONFIGS.get(method.name, {})}, generic_space()
    )
