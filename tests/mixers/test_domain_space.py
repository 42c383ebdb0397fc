"""DomainSpace: priors, bounds and repetition caps, weight validation, and ``project``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from mixers.base import SUM_TOLERANCE, DomainSpace
from mixopt.errors import InvalidInput, InvalidMixture

FloatArray = NDArray[np.float64]
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def space_of(*domains: dict[str, Any], **kwargs: Any) -> DomainSpace:
    return DomainSpace.from_domains(list(domains), **kwargs)


def three() -> DomainSpace:
    return space_of(
        {"name": "web", "min_weight": 0.1, "max_weight": 0.8},
        {"name": "code", "max_weight": 0.5},
        {"name": "math"},
    )


def locs(exc: pytest.ExceptionInfo[InvalidInput]) -> list[tuple[str | int, ...]]:
    return [e.loc for e in exc.value.errors]


# --- priors ---------------------------------------------------------------------------------


def test_prior_defaults_to_token_share_when_every_domain_has_tokens() -> None:
    space = space_of({"name": "a", "tokens": 3e9}, {"name": "b", "tokens": 1e9})
    np.testing.assert_allclose(space.prior, [0.75, 0.25])
    assert space.tokens == (3e9, 1e9)


def test_prior_is_uniform_when_any_domain_lacks_tokens() -> None:
    space = space_of({"name": "a", "tokens": 3e9}, {"name": "b"}, {"name": "c", "tokens": None})
    np.testing.assert_allclose(space.prior, [1 / 3] * 3)


def test_prior_is_uniform_without_tokens() -> None:
    space = space_of(*({"name": f"d{i}"} for i in range(4)))
    np.testing.assert_allclose(space.prior, [0.25] * 4)


def test_explicit_priors_are_normalised_and_win_over_tokens() -> None:
    space = space_of(
        {"name": "a", "prior": 2.0, "tokens": 1.0},
        {"name": "b", "prior": 6.0, "tokens": 1.0},
    )
    np.testing.assert_allclose(space.prior, [0.25, 0.75])
    assert math.isclose(float(space.prior.sum()), 1.0)


def test_mixing_given_and_missing_priors_names_every_missing_one() -> None:
    with pytest.raises(InvalidInput) as exc:
        space_of(
            {"name": "a", "prior": 0.5}, {"name": "b"}, {"name": "c", "prior": 0.2}, {"name": "d"}
        )
    assert locs(exc) == [("domains", 1, "prior"), ("domains", 3, "prior")]


def test_error_locations_follow_the_given_prefix() -> None:
    with pytest.raises(InvalidInput) as exc:
        DomainSpace.from_domains(
            [{"name": "a", "prior": 1.0}, {"name": "b"}], loc=("body", "domains")
        )
    assert locs(exc) == [("body", "domains", 1, "prior")]


# --- bounds and repetition caps -------------------------------------------------------------


def test_repetition_caps_tighten_the_upper_bounds() -> None:
    space = space_of(
        {"name": "small", "tokens": 1e9, "max_weight": 0.9},  # cap 4 * 1e9 / 20e9 = 0.2
        {"name": "large", "tokens": 100e9, "max_weight": 0.7},  # cap 20 > 0.7: declared wins
        {"name": "unknown"},  # no token count: no cap
        train_tokens=20e9,
        max_epochs=4,
    )
    np.testing.assert_allclose(space.upper, [0.2, 0.7, 1.0])
    np.testing.assert_allclose(space.declared_upper, [0.9, 0.7, 1.0])
    assert space.contains(np.array([0.2, 0.7, 0.1])).all()
    assert not space.contains(np.array([0.3, 0.6, 0.1])).any()


@pytest.mark.parametrize(
    "kwargs", [{}, {"train_tokens": 20e9}, {"max_epochs": 4.0}], ids=["none", "tokens", "epochs"]
)
def test_repetition_caps_need_both_train_tokens_and_max_epochs(kwargs: dict[str, float]) -> None:
    space = space_of({"name": "a", "tokens": 1e9}, {"name": "b", "tokens": 1e9}, **kwargs)
    np.testing.assert_allclose(space.upper, [1.0, 1.0])


def test_min_weights_summing_above_one_are_infeasible() -> None:
    with pytest.raises(InvalidInput) as exc:
        space_of({"name": "a", "min_weight": 0.6}, {"name": "b", "min_weight": 0.5})
    assert locs(exc) == [("domains",)]
    assert "min_weight" in exc.value.errors[0].msg


def test_upper_bounds_summing_below_one_are_infeasible() -> None:
    with pytest.raises(InvalidInput) as exc:
        space_of({"name": "a", "max_weight": 0.4}, {"name": "b", "max_weight": 0.5})
    assert locs(exc) == [("domains",)]


def test_repetition_caps_summing_below_one_are_infeasible() -> None:
    with pytest.raises(InvalidInput) as exc:
        space_of(
            {"name": "a", "tokens": 1e9},
            {"name": "b", "tokens": 2e9},
            train_tokens=100e9,
            max_epochs=10,  # caps 0.1 and 0.2
        )
    assert locs(exc) == [("domains",)]
    assert "repetition" in exc.value.errors[0].msg


def test_min_weight_above_its_repetition_cap_is_infeasible() -> None:
    with pytest.raises(InvalidInput) as exc:
        space_of(
            {"name": "a"},
            {"name": "b", "tokens": 1e9, "min_weight": 0.3},  # cap 2 * 1e9 / 10e9 = 0.2
            train_tokens=10e9,
            max_epochs=2,
        )
    assert locs(exc) == [("domains", 1, "min_weight")]


def test_feasible_edge_bounds_are_accepted() -> None:
    space = space_of(
        {"name": "a", "min_weight": 0.5, "max_weight": 0.5}, {"name": "b", "min_weight": 0.5}
    )
    assert space.contains(np.array([0.5, 0.5])).all()
    tight = space_of({"name": "a", "max_weight": 0.4}, {"name": "b", "max_weight": 0.6})
    assert tight.contains(np.array([0.4, 0.6])).all()


# --- validate_weights ---------------------------------------------------------------------------


def test_validate_weights_returns_the_canonical_order() -> None:
    space = three()
    array = space.validate_weights({"math": 0.3, "web": 0.5, "code": 0.2})
    np.testing.assert_array_equal(array, [0.5, 0.2, 0.3])


def test_validate_weights_reports_missing_and_unknown_domains_together() -> None:
    with pytest.raises(InvalidMixture) as exc:
        three().validate_weights({"web": 0.5, "code": 0.3, "books": 0.2})
    assert set(locs(exc)) == {("weights", "books"), ("weights",)}
    missing = next(e for e in exc.value.errors if e.loc == ("weights",))
    assert "math" in missing.msg


def test_validate_weights_uses_the_given_location() -> None:
    with pytest.raises(InvalidMixture) as exc:
        three().validate_weights(
            {"web": 1.0, "code": 0.0, "math": -0.0, "x": 0.0}, loc=("body", "weights")
        )
    assert locs(exc) == [("body", "weights", "x")]


def test_validate_weights_rejects_negative_weights() -> None:
    with pytest.raises(InvalidMixture) as exc:
        three().validate_weights({"web": 0.7, "code": -0.1, "math": 0.4})
    assert locs(exc) == [("weights", "code")]
    assert ">= 0" in exc.value.errors[0].msg


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "0.5", None])
def test_validate_weights_rejects_non_finite_values(bad: Any) -> None:
    with pytest.raises(InvalidMixture) as exc:
        three().validate_weights({"web": 0.5, "code": bad, "math": 0.5})
    assert locs(exc) == [("weights", "code")]
    assert "finite" in exc.value.errors[0].msg


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_validate_weights_sum_tolerance_is_one_in_a_million(sign: float) -> None:
    space = three()
    inside = 1.0 + sign * (SUM_TOLERANCE - 1e-8)
    outside = 1.0 + sign * (SUM_TOLERANCE + 1e-8)
    array = space.validate_weights({"web": 0.5, "code": 0.2, "math": inside - 0.7})
    assert abs(array.sum() - inside) < 1e-12  # accepted as given: never renormalised
    with pytest.raises(InvalidMixture) as exc:
        space.validate_weights({"web": 0.5, "code": 0.2, "math": outside - 0.7})
    assert locs(exc) == [("weights",)]
    assert "sum" in exc.value.errors[0].msg


def test_validate_weights_checks_bounds_only_when_asked() -> None:
    space = three()  # web in [0.1, 0.8], code <= 0.5
    weights = {"web": 0.05, "code": 0.6, "math": 0.35}
    np.testing.assert_allclose(space.validate_weights(weights), [0.05, 0.6, 0.35])
    with pytest.raises(InvalidMixture) as exc:
        space.validate_weights(weights, enforce_bounds=True)
    assert locs(exc) == [("weights", "web"), ("weights", "code")]


def test_validate_weights_bounds_include_repetition_caps_and_tolerance() -> None:
    space = space_of(
        {"name": "a", "tokens": 1e9}, {"name": "b"}, train_tokens=10e9, max_epochs=2
    )  # a <= 0.2
    space.validate_weights({"a": 0.2 + 5e-7, "b": 0.8 - 5e-7}, enforce_bounds=True)
    with pytest.raises(InvalidMixture) as exc:
        space.validate_weights({"a": 0.25, "b": 0.75}, enforce_bounds=True)
    assert locs(exc) == [("weights", "a")]


@given(st.lists(st.floats(0, 1), min_size=2, max_size=12), st.randoms(use_true_random=False))
@settings(max_examples=30, deadline=None)
def test_to_dict_and_to_array_round_trip_in_canonical_order(values: list[float], rnd: Any) -> None:
    space = space_of(*({"name": f"d{i}"} for i in range(len(values))))
    array = np.array(values)
    as_dict = space.to_dict(array)
    assert list(as_dict) == list(space.names)
    shuffled = list(as_dict.items())
    rnd.shuffle(shuffled)
    np.testing.assert_array_equal(space.to_array(dict(shuffled)), array)


def test_contains_is_row_wise_with_tolerance() -> None:
    space = three()
    rows = np.array(
        [
            [0.5, 0.2, 0.3],  # inside
            [0.05, 0.5, 0.45],  # web below its min
            [0.5, 0.2, 0.3 + 1e-3],  # sums to 1.001
            [0.1 - 5e-7, 0.5 + 5e-7, 0.4],  # on the edges, within tolerance
        ]
    )
    assert space.contains(rows).tolist() == [True, False, False, True]
    assert space.contains(rows[0]).tolist() == [True]


# --- project ------------------------------------------------------------------------------------


@st.composite
def feasible_bounds(draw: st.DrawFn, zero_lower: bool = False) -> tuple[FloatArray, FloatArray]:
    """Random lower/upper bounds with sum(lower) <= 1 <= sum(upper), some of them tight."""
    k = draw(st.integers(2, 12))
    unit = st.floats(0, 1)
    if zero_lower:
        lower = np.zeros(k)
    else:
        share = np.array(draw(st.lists(st.one_of(st.just(0.0), unit), min_size=k, max_size=k)))
        total = draw(st.one_of(st.just(0.0), st.floats(0, 0.999)))
        lower = total * share / share.sum() if share.sum() > 0 else np.zeros(k)
    reach = np.array(draw(st.lists(st.one_of(st.just(1.0), unit), min_size=k, max_size=k)))
    upper = np.minimum(lower + reach * (1 - lower), 1.0)
    if upper.sum() < 1:  # widen the gaps up to a sum of 1 plus some slack (0: a single point)
        gap = 1 - upper
        slack = draw(st.one_of(st.just(0.0), st.floats(0, 0.5)))
        upper = np.minimum(upper + min(1 - upper.sum() + slack, gap.sum()) * gap / gap.sum(), 1.0)
    return lower, upper


def bounded_space(lower: FloatArray, upper: FloatArray) -> DomainSpace:
    return DomainSpace.from_domains(
        [
            {"name": f"d{i}", "min_weight": float(lo), "max_weight": float(max(hi, lo))}
            for i, (lo, hi) in enumerate(zip(lower, upper, strict=True))
        ]
    )


magnitudes = st.floats(0, 1e300, allow_subnormal=True)


@st.composite
def rows_for(draw: st.DrawFn, k: int) -> FloatArray:
    """Non-negative rows: dense, one-hot, very sparse, tiny and huge values."""
    kind = draw(st.sampled_from(["dense", "one-hot", "sparse", "unit"]))
    n = draw(st.integers(1, 6))
    rows = np.zeros((n, k))
    for r in range(n):
        if kind == "one-hot":
            rows[r, draw(st.integers(0, k - 1))] = draw(magnitudes.filter(lambda x: x > 0))
        elif kind == "sparse":
            for i in range(k):
                if draw(st.integers(0, 4)) == 0:
                    rows[r, i] = draw(magnitudes)
        elif kind == "unit":
            rows[r] = draw(st.lists(st.floats(0, 1), min_size=k, max_size=k))
        else:
            rows[r] = draw(st.lists(magnitudes, min_size=k, max_size=k))
    return rows


@st.composite
def space_and_rows(draw: st.DrawFn, zero_lower: bool = False) -> tuple[DomainSpace, FloatArray]:
    lower, upper = draw(feasible_bounds(zero_lower))
    return bounded_space(lower, upper), draw(rows_for(len(lower)))


def reachable(space: DomainSpace, row: FloatArray) -> bool:
    """Can the row's support alone (others at their minimum) reach a sum of 1?"""
    return bool(np.where(row > 0, space.upper, space.lower).sum() >= 1 - 1e-12)


@given(space_and_rows())
@PROPERTY
def test_project_lands_on_the_simplex_within_the_bounds(
    case: tuple[DomainSpace, FloatArray],
) -> None:
    space, rows = case
    out = space.project(rows)
    assert out.shape == rows.shape
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=0, atol=1e-9)
    assert np.all(out >= space.lower) and np.all(out <= space.upper)
    assert space.contains(out).all()


@given(space_and_rows())
@PROPERTY
def test_project_scales_rows_whose_support_can_reach_one(
    case: tuple[DomainSpace, FloatArray],
) -> None:
    """Such a row maps to clip(g * v, lower, upper): free weights keep their ratios."""
    space, rows = case
    out = space.project(rows)
    for v, w in zip(rows, out, strict=True):
        if not reachable(space, v):
            continue
        free = (v > 1e-300) & (w > space.lower + 1e-9) & (w < space.upper - 1e-9) & (w > 1e-6)
        if free.any():
            ratio = w[free] / v[free]
            np.testing.assert_allclose(ratio, ratio[0], rtol=1e-6)
            with np.errstate(over="ignore"):
                scaled = np.clip(ratio[0] * v, space.lower, space.upper)
            np.testing.assert_allclose(w, scaled, rtol=1e-6, atol=1e-9)


@given(space_and_rows())
@PROPERTY
def test_project_shifts_rows_whose_support_cannot_reach_one(
    case: tuple[DomainSpace, FloatArray],
) -> None:
    """Such a row maps to its Euclidean projection clip(v + s, lower, upper)."""
    space, rows = case
    out = space.project(rows)
    for v, w in zip(rows, out, strict=True):
        if reachable(space, v):
            continue
        free = (w > space.lower + 1e-9) & (w < space.upper - 1e-9)
        if free.any():
            shift = w[free] - v[free]
            np.testing.assert_allclose(shift, shift[0], rtol=0, atol=1e-9)
            assert shift[0] > 0  # the support falls short of 1: weight is added, never removed
            shifted = np.clip(v + shift[0], space.lower, space.upper)
            np.testing.assert_allclose(w, shifted, rtol=0, atol=1e-9)


@st.composite
def space_and_inside_point(draw: st.DrawFn) -> tuple[DomainSpace, FloatArray]:
    lower, upper = draw(feasible_bounds())
    space = bounded_space(lower, upper)
    lo, hi = space.lower, space.upper
    u = np.array(draw(st.lists(st.floats(0, 1), min_size=space.k, max_size=space.k)))
    gaps, room = (hi - lo) * u, 1 - lo.sum()
    if gaps.sum() >= room:
        gaps *= room / gaps.sum() if gaps.sum() > 0 else 0.0
    else:
        spare = hi - lo - gaps
        gaps += spare * (room - gaps.sum()) / spare.sum()
    point = np.clip(lo + gaps, lo, hi)
    assume(space.contains(point, tol=1e-12).all())
    return space, point


@given(space_and_inside_point())
@PROPERTY
def test_project_leaves_points_inside_the_space_nearly_unchanged(
    case: tuple[DomainSpace, FloatArray],
) -> None:
    space, point = case
    np.testing.assert_allclose(space.project(point)[0], point, rtol=0, atol=1e-9)


@given(space_and_rows())
@PROPERTY
def test_project_is_idempotent(case: tuple[DomainSpace, FloatArray]) -> None:
    space, rows = case
    once = space.project(rows)
    np.testing.assert_allclose(space.project(once), once, rtol=0, atol=1e-9)


@given(st.one_of(space_and_rows(zero_lower=True), space_and_rows()))
@PROPERTY
def test_project_keeps_zero_weights_at_zero_when_the_support_can_reach_one(
    case: tuple[DomainSpace, FloatArray],
) -> None:
    space, rows = case
    keep = [i for i, v in enumerate(rows) if reachable(space, v)]
    assume(keep)
    out = space.project(rows[keep])
    zero = (rows[keep] == 0) & (space.lower == 0)  # exactly 0, not 1e-17
    assert np.all(out[zero] == 0.0)


def test_project_scales_rows_spanning_many_orders_of_magnitude() -> None:
    space = space_of({"name": "a"}, {"name": "b"}, {"name": "c"})
    out = space.project(np.array([1.0, 1e-40, 0.5]))[0]
    np.testing.assert_allclose(out, [2 / 3, 1e-40 * 2 / 3, 1 / 3], rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("tiny", [5e-324, 1e-310, 1e-300])
def test_project_handles_subnormal_and_tiny_rows(tiny: float) -> None:
    space = space_of({"name": "a"}, {"name": "b"}, {"name": "c"})
    np.testing.assert_array_equal(space.project(np.array([tiny, 0.0, 0.0])), [[1.0, 0.0, 0.0]])
    np.testing.assert_allclose(space.project(np.array([tiny, tiny, 0.0]))[0], [0.5, 0.5, 0.0])


def test_project_of_a_huge_one_hot_row_is_exactly_that_vertex() -> None:
    space = space_of({"name": "a"}, {"name": "b"}, {"name": "c"})
    np.testing.assert_array_equal(space.project(np.array([1e300, 0.0, 0.0])), [[1.0, 0.0, 0.0]])


def test_project_falls_back_to_the_euclidean_projection() -> None:
    # a alone cannot reach 1 (max 0.5): the rest is shared by clip(v + s), equally here.
    space = space_of(
        {"name": "a", "max_weight": 0.5},
        {"name": "b", "max_weight": 0.6},
        {"name": "c", "min_weight": 0.1},
    )
    np.testing.assert_allclose(space.project(np.array([1.0, 0.0, 0.0]))[0], [0.5, 0.25, 0.25])
    np.testing.assert_allclose(space.project(np.array([1e300, 0.0, 0.0]))[0], [0.5, 0.25, 0.25])
    np.testing.assert_allclose(space.project(np.zeros(3))[0], [1 / 3, 1 / 3, 1 / 3])


def test_from_swarm_centres_the_prior_on_the_mean_mixture():
    weights = np.array([[0.5, 0.5, 0.0], [0.7, 0.3, 0.0]])
    space = DomainSpace.from_swarm(["a", "b", "c"], weights)
    assert space.names == ("a", "b", "c")
    np.testing.assert_allclose(space.prior, [0.6, 0.4, 0.0], atol=1e-11)
    assert space.prior[2] > 0  # a domain no run gave weight still has a prior
    assert space.contains(np.array([[0.0, 0.0, 1.0]])).all()  # and no bounds
