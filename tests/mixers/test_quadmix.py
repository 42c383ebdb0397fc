"""QuaDMix: the sampling function, its parameters, the ``quadmix`` design and the joint search.

The Must-show (``test_recommended_params_beat_random_params``): on synthetic documents with two
quality scores and a hidden true quality (a known, domain-specific combination of the scores), a
LightGBM fitted on the joint features of 96 proposed runs recommends weights and parameters whose
simulated loss beats random weights-and-parameters, and random parameters at the recommended
weights, on average and at the 75th percentile (i.e. better than 3 in 4 random draws).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pytest

from mixers import get_method
from mixers.base import DomainSpace, Observation
from mixers.offline.quadmix import (
    PARAM_KEYS,
    ParamRanges,
    QuadMixConfig,
    QuadMixMixer,
    QuadMixParams,
    decode,
    encode,
    feature_names,
    joint_feature_names,
    joint_features,
    recommend_joint,
    sample_documents,
    sample_params,
    sampling_probabilities,
    sampling_values,
)
from mixers.offline.regmix import dirichlet_design
from mixers.regressors import make_regressor
from mixers.testing import assert_valid_mixtures, check_offline_mixer, generic_space
from mixopt.errors import InvalidInput

DOMAINS = ("web", "code", "books")
SCORES = ("s1", "s2")


def three_domains() -> DomainSpace:
    return DomainSpace.from_domains(
        [{"name": d, "tokens": t} for d, t in zip(DOMAINS, (3e3, 2e3, 2e3), strict=True)]
    )


def make_params(
    merge: Any = ((0.5, 0.5),) * 3,
    threshold: Any = (0.1, 0.1, 0.1),
    steepness: Any = (100.0, 100.0, 100.0),
    exponent: Any = (1.0, 1.0, 1.0),
) -> QuadMixParams:
    return QuadMixParams(DOMAINS, SCORES, np.array(merge), threshold, steepness, exponent)


def corpus(sizes: tuple[int, ...] = (3000, 2000, 2000), seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    scores = rng.normal(size=(len(labels), 2))
    return {"scores": scores, "labels": labels, "tokens": rng.integers(50, 2000, len(labels))}


# --- parameters ----------------------------------------------------------------------------------


def test_params_round_trip_through_json_keyed_by_domain_and_score() -> None:
    p = sample_params(three_domains(), SCORES, 1, np.random.default_rng(0))[0]
    raw = p.to_params()
    assert list(raw) == list(PARAM_KEYS)
    assert set(raw["merge"]) == set(DOMAINS)
    assert all(set(row) == set(SCORES) for row in raw["merge"].values())
    assert all(set(raw[k]) == set(DOMAINS) for k in ("threshold", "steepness", "exponent"))
    back = QuadMixParams.from_params(raw, DOMAINS, SCORES)
    np.testing.assert_array_equal(encode(back), encode(p))


def test_encoding_round_trips_and_orders_features_by_parameter_then_domain() -> None:
    p = make_params(
        merge=((0.2, 0.8), (1.0, 0.0), (0.5, 0.5)),
        threshold=(0.01, 0.05, 0.1),
        steepness=(0.0, 10.0, 999.0),
        exponent=(0.1, 0.2, 0.3),
    )
    v = encode(p)
    names = feature_names(DOMAINS, SCORES)
    assert names == p.feature_names()
    assert len(v) == len(names) == 3 * (2 + 3)
    assert names[:3] == ["merge:web:s1", "merge:web:s2", "merge:code:s1"]
    assert names[6:9] == ["threshold:web", "threshold:code", "threshold:books"]
    assert names[-1] == "exponent:books"
    assert v[names.index("merge:code:s1")] == 1.0
    assert v[names.index("steepness:books")] == 999.0
    back = decode(v, DOMAINS, SCORES)
    np.testing.assert_array_equal(encode(back), v)


def test_decode_is_lenient_for_averaged_or_perturbed_vectors() -> None:
    v = encode(make_params())
    v[0:2] = (-0.5, 2.0)  # web's merge: clipped, renormalised
    v[2:4] = (0.0, 0.0)  # code's merge: all zero -> uniform
    v[6] = 1.7  # threshold above 1
    v[9] = -3.0  # negative steepness
    p = decode(v, DOMAINS, SCORES)
    np.testing.assert_allclose(p.merge, [[0.0, 1.0], [0.5, 0.5], [0.5, 0.5]])
    assert p.threshold[0] == 1.0
    assert p.steepness[0] == 0.0
    with pytest.raises(ValueError, match="expected 15 values"):
        decode(v[:-1], DOMAINS, SCORES)


def test_params_constructor_checks_shapes_and_ranges() -> None:
    with pytest.raises(ValueError, match="shape"):
        QuadMixParams(DOMAINS, SCORES, np.full((3, 3), 1 / 3), *np.ones((3, 3)))
    with pytest.raises(ValueError, match="sum to 1"):
        make_params(merge=((0.5, 0.6),) * 3)
    with pytest.raises(ValueError, match="threshold"):
        make_params(threshold=(0.1, 1.5, 0.1))
    with pytest.raises(ValueError, match=">= 0"):
        make_params(exponent=(1.0, -1.0, 1.0))
    p = make_params()
    with pytest.raises(ValueError, match="read-only"):
        p.threshold[0] = 0.5


def _errors(params: Any) -> list[tuple[tuple[str | int, ...], str]]:
    with pytest.raises(InvalidInput) as exc:
        QuadMixParams.from_params(params, DOMAINS, SCORES)
    return [(e.loc, e.msg) for e in exc.value.errors]


def test_from_params_locates_every_fault_under_params() -> None:
    good = make_params().to_params()
    bad = {
        "merge": {
            "web": {"s1": -0.5, "s2": 1.5},
            "code": {"s1": 0.5, "s2": 0.6},
            "books": {"s1": 1.0, "extra": 0.0},
            "nope": {},
        },
        "threshold": {**good["threshold"], "web": 1.5},
        "steepness": {**good["steepness"], "code": "steep"},
        "exponent": {**good["exponent"], "books": True},
        "floor": 0.001,
    }
    errors = dict(_errors(bad))
    assert ("params", "floor") in errors
    assert ("params", "merge", "nope") in errors
    assert ("params", "merge", "web", "s1") in errors  # negative
    assert "sum to" in errors[("params", "merge", "code")]
    assert ("params", "merge", "books", "extra") in errors
    assert "missing scores: s2" in errors[("params", "merge", "books")]
    assert "<= 1" in errors[("params", "threshold", "web")]
    assert errors[("params", "steepness", "code")] == "must be a number"
    assert errors[("params", "exponent", "books")] == "must be a number"  # bools are not numbers
    assert all(loc[0] == "params" for loc in errors)


def test_from_params_names_missing_keys_and_domains_non_objects_and_non_finite() -> None:
    errors = _errors({"merge": {"web": {"s1": 1.0, "s2": 0.0}}, "threshold": 0.1})
    locs = [loc for loc, _ in errors]
    assert ("params", "threshold") in locs  # not an object
    assert any(loc == ("params",) and "steepness" in msg for loc, msg in errors)
    assert any(loc == ("params", "merge") and "code, books" in msg for loc, msg in errors)
    nan = make_params().to_params()
    nan["steepness"]["web"] = float("nan")
    assert _errors(nan) == [(("params", "steepness", "web"), "must be finite")]
    with pytest.raises(InvalidInput):
        QuadMixParams.from_params([], DOMAINS, SCORES)  # type: ignore[arg-type]


def test_sample_params_follows_algorithm_1() -> None:
    params = sample_params(three_domains(), SCORES, 500, np.random.default_rng(3))
    assert len(params) == 500
    merge = np.stack([p.merge for p in params])
    np.testing.assert_allclose(merge.sum(axis=2), 1.0)
    assert merge.min() >= 0
    for key, (lo, hi) in (("threshold", (0, 0.1)), ("steepness", (0, 1000)), ("exponent", (0, 1))):
        values = np.stack([getattr(p, key) for p in params])
        assert values.min() >= lo and values.max() <= hi
        assert values.max() > lo + 0.9 * (hi - lo)  # the whole range is used
    # Reproducible from the rng; the global score weights correlate the domains' merges.
    again = sample_params(list(DOMAINS), SCORES, 500, np.random.default_rng(3))
    np.testing.assert_array_equal(encode(again[7]), encode(params[7]))
    assert np.corrcoef(merge[:, 0, 0], merge[:, 1, 0])[0, 1] > 0.2
    custom = sample_params(DOMAINS, SCORES, 50, np.random.default_rng(0), ParamRanges((0.2, 0.5)))
    assert all(np.all((p.threshold >= 0.2) & (p.threshold <= 0.5)) for p in custom)
    with pytest.raises(ValueError, match="range"):
        ParamRanges(steepness=(5.0, 1.0))


# --- the sampling function -----------------------------------------------------------------------


def test_sampling_values_decrease_within_the_threshold_and_are_zero_past_it() -> None:
    r = np.linspace(0, 0.2, 201)
    s = sampling_values(r, 0.1, 50.0, 0.7)
    inside = r <= 0.1
    assert np.all(s[~inside] == 0)
    assert np.all((s[inside] >= 1) & (s[inside] <= 2**0.7))
    assert np.all(np.diff(s[inside]) <= 0)  # non-increasing in r (better docs get more)
    assert sampling_values(0.1, 0.1, 50.0, 0.7) == pytest.approx(1.0)  # at the threshold
    assert sampling_values(0.0, 0.1, 1e4, 1.0) == pytest.approx(2.0)
    # A hard cut when the steepness or the exponent is zero.
    np.testing.assert_array_equal(sampling_values(r, 0.1, 0.0, 1.0), inside.astype(float))
    np.testing.assert_array_equal(sampling_values(r, 0.1, 50.0, 0.0), inside.astype(float))


def test_probabilities_are_a_distribution_monotone_in_quality() -> None:
    c = corpus()
    p = make_params(merge=((1.0, 0.0), (0.3, 0.7), (0.0, 1.0)), threshold=(0.1, 0.05, 0.2))
    r = sampling_probabilities(c["scores"], c["labels"], p, [0.5, 0.3, 0.2])
    assert np.all((r.probabilities >= 0) & (r.probabilities <= 1))
    assert r.probabilities.sum() == pytest.approx(1.0)
    assert r.token_share.sum() == pytest.approx(1.0)
    for m in range(3):
        sel = c["labels"] == m
        order = np.argsort(-r.quality[sel])  # best first
        assert np.all(np.diff(r.probabilities[sel][order]) <= 1e-15)
        assert np.all(np.diff(r.percentile[sel][order]) >= 0)
        assert r.percentile[sel].min() == 0.0
    # Web merges s1 only: its sampled documents are exactly its best by s1.
    web = c["labels"] == 0
    picked = r.probabilities[web] > 0
    assert c["scores"][web, 0][picked].min() > c["scores"][web, 0][~picked].max()


def test_threshold_selects_that_share_of_each_domain() -> None:
    c = corpus(seed=1)
    thresholds = (0.02, 0.05, 0.1)
    for tokens in (None, c["tokens"]):
        p = make_params(threshold=thresholds, steepness=(0.0, 500.0, 1000.0))
        r = sampling_probabilities(c["scores"], c["labels"], p, tokens=tokens)
        t = np.ones(len(c["labels"])) if tokens is None else c["tokens"].astype(float)
        for m, omega in enumerate(thresholds):
            sel = c["labels"] == m
            picked = r.values[sel] > 0
            share = t[sel][picked].sum() / t[sel].sum()
            # r <= omega: at least omega of the tokens, over by at most the last document.
            assert omega <= share + 1e-12
            assert share <= omega + t[sel].max() / t[sel].sum()


def test_domain_shares_follow_the_weights_or_emerge_from_the_sampling_values() -> None:
    c = corpus(seed=2)
    p = make_params(threshold=(0.1, 0.02, 0.05))
    weights = {"web": 0.2, "code": 0.5, "books": 0.3}
    r = sampling_probabilities(c["scores"], c["labels"], p, weights, tokens=c["tokens"])
    np.testing.assert_allclose(r.domain_share, [0.2, 0.5, 0.3])
    assert r.domain_shares() == pytest.approx(weights)
    # Monte Carlo: the token share of draws matches.
    rng = np.random.default_rng(0)
    draws = rng.choice(len(r.probabilities), size=200_000, p=r.probabilities)
    tokens = np.bincount(c["labels"][draws], weights=c["tokens"][draws], minlength=3)
    np.testing.assert_allclose(tokens / tokens.sum(), [0.2, 0.5, 0.3], atol=0.01)
    # The paper's mode (no weights): the shares emerge from S.
    paper = sampling_probabilities(c["scores"], c["labels"], p, tokens=c["tokens"])
    mass = np.bincount(c["labels"], weights=paper.values * c["tokens"], minlength=3)
    np.testing.assert_allclose(paper.domain_share, mass / mass.sum())
    np.testing.assert_allclose(paper.probabilities, paper.values / paper.values.sum())


def test_weighted_domain_without_documents_is_renormalised() -> None:
    c = corpus(sizes=(500, 500, 0))
    r = sampling_probabilities(c["scores"], c["labels"], make_params(), [0.25, 0.25, 0.5])
    np.testing.assert_allclose(r.domain_share, [0.5, 0.5, 0.0])
    with pytest.raises(ValueError, match="no document"):
        sampling_probabilities(c["scores"], c["labels"], make_params(), [0, 0, 1.0])


def test_input_forms_agree_and_bad_input_raises() -> None:
    c = corpus(sizes=(300, 200, 100))
    p = make_params(merge=((0.3, 0.7), (0.6, 0.4), (1.0, 0.0)))
    names = np.array(DOMAINS)[c["labels"]]
    as_array = sampling_probabilities(c["scores"], c["labels"], p, [0.2, 0.3, 0.5])
    as_names = sampling_probabilities(
        {"s2": c["scores"][:, 1], "s1": c["scores"][:, 0], "unused": np.zeros(600)},
        names,
        p,
        {"web": 0.2, "code": 0.3, "books": 0.5},
    )
    np.testing.assert_array_equal(as_array.probabilities, as_names.probabilities)
    # Ties share a percentile (nothing strictly better than either).
    tied = np.zeros((4, 2))
    r = sampling_probabilities(tied, np.zeros(4, dtype=int), p)
    assert np.all(r.percentile[:4] == 0) and np.all(r.probabilities == 0.25)
    # "none" keeps the raw scores: a scale change then changes the ranking, "rank" does not.
    scaled = c["scores"] * np.array([1.0, 100.0])
    cases: list[tuple[Literal["rank", "none"], bool]] = [("rank", True), ("none", False)]
    for how, same in cases:
        a = sampling_probabilities(c["scores"], c["labels"], p, normalize=how)
        b = sampling_probabilities(scaled, c["labels"], p, normalize=how)
        assert np.array_equal(a.probabilities, b.probabilities) == same
    with pytest.raises(ValueError, match="unknown domain labels: news"):
        sampling_probabilities(c["scores"], np.array(["news"] * 600), p)
    with pytest.raises(ValueError, match="integer domain labels"):
        sampling_probabilities(c["scores"], c["labels"] + 1, p)
    with pytest.raises(ValueError, match="missing: s2"):
        sampling_probabilities({"s1": c["scores"][:, 0]}, c["labels"], p)
    with pytest.raises(ValueError, match="finite"):
        sampling_probabilities(np.full((600, 2), np.nan), c["labels"], p)
    with pytest.raises(ValueError, match="domain labels"):
        sampling_probabilities(c["scores"], c["labels"][:-1], p)
    with pytest.raises(ValueError, match="token counts"):
        sampling_probabilities(c["scores"], c["labels"], p, tokens=np.zeros(600))
    with pytest.raises(ValueError, match="unknown domains in weights"):
        sampling_probabilities(c["scores"], c["labels"], p, {"news": 1.0})


def test_sample_documents_draws_the_expected_copies() -> None:
    c = corpus(seed=4)
    p = make_params(threshold=(0.1, 0.05, 0.08), exponent=(0.5, 1.0, 1.0))
    copies = sample_documents(c["scores"], c["labels"], p, np.random.default_rng(0))
    assert copies.dtype == np.int64 and copies.min() >= 0
    r = sampling_probabilities(c["scores"], c["labels"], p)
    assert np.all(copies[r.values == 0] == 0)
    assert np.all(np.abs(copies - r.values) < 1)  # floor(S) or floor(S) + 1
    # With weights and a budget: the tokens per domain follow the weights.
    runs = [
        sample_documents(
            c["scores"],
            c["labels"],
            p,
            np.random.default_rng(seed),
            [0.6, 0.3, 0.1],
            budget=2e6,
            tokens=c["tokens"],
        )
        for seed in range(20)
    ]
    tokens = np.mean(
        [np.bincount(c["labels"], weights=k * c["tokens"], minlength=3) for k in runs], axis=0
    )
    np.testing.assert_allclose(tokens / 2e6, [0.6, 0.3, 0.1], rtol=0.03)
    np.testing.assert_array_equal(
        runs[3],
        sample_documents(
            c["scores"],
            c["labels"],
            p,
            np.random.default_rng(3),
            [0.6, 0.3, 0.1],
            budget=2e6,
            tokens=c["tokens"],
        ),
    )


# --- joint features and search -------------------------------------------------------------------


def test_joint_features_are_weights_then_encoded_params_from_objects_or_json() -> None:
    space = three_domains()
    params = sample_params(space, SCORES, 4, np.random.default_rng(0))
    weights = dirichlet_design(space, 4, np.random.default_rng(1))
    x = joint_features(space, weights, params)
    assert x.shape == (4, 3 + 15)
    columns = joint_feature_names(space, SCORES)
    assert columns[:4] == ["weight:web", "weight:code", "weight:books", "merge:web:s1"]
    np.testing.assert_array_equal(x[:, :3], weights)
    np.testing.assert_array_equal(x[2, 3:], encode(params[2]))
    from_json = joint_features(space, weights, [p.to_params() for p in params], SCORES)
    np.testing.assert_array_equal(from_json, x)
    with pytest.raises(ValueError, match="score_names"):
        joint_features(space, weights, [p.to_params() for p in params])
    with pytest.raises(InvalidInput):
        joint_features(space, weights[:1], [{"merge": {}}], SCORES)
    with pytest.raises(ValueError, match="scores"):
        joint_features(space, weights, params, ("s2", "s1"))


def test_recommend_joint_finds_the_optimum_of_a_known_model() -> None:
    space = three_domains()
    names = joint_feature_names(space, SCORES)
    target = np.zeros(len(names))
    target[:3] = (0.6, 0.3, 0.1)
    for d, a in zip(DOMAINS, (0.9, 0.1, 0.5), strict=True):
        target[names.index(f"merge:{d}:s1")] = a
        target[names.index(f"merge:{d}:s2")] = 1 - a
        target[names.index(f"threshold:{d}")] = 0.05
        target[names.index(f"steepness:{d}")] = 500.0
        target[names.index(f"exponent:{d}")] = 0.5
    scale = np.ones(len(names))
    scale[[i for i, n in enumerate(names) if n.startswith("threshold")]] = 10.0
    scale[[i for i, n in enumerate(names) if n.startswith("steepness")]] = 1e-3

    def predict(x: Any) -> Any:
        return (((x - target) * scale) ** 2).sum(axis=1)

    rec = recommend_joint(
        space, predict, np.random.default_rng(0), score_names=SCORES, candidates=20_000
    )
    assert space.contains(rec.weights).all()
    np.testing.assert_allclose(rec.weights, target[:3], atol=0.1)
    np.testing.assert_allclose(rec.params.merge[:, 0], (0.9, 0.1, 0.5), atol=0.15)
    at_rec = predict(joint_features(space, [rec.weights], [rec.params]))
    assert rec.predicted == pytest.approx(float(at_rec[0]))
    random_x = joint_features(
        space,
        dirichlet_design(space, 64, np.random.default_rng(1)),
        sample_params(space, SCORES, 64, np.random.default_rng(2)),
    )
    assert rec.predicted < np.quantile(predict(random_x), 0.05)
    out = rec.to_dict(space)
    assert set(out) == {"weights", "params", "predicted"}
    QuadMixParams.from_params(out["params"], DOMAINS, SCORES)
    # Maximising the negated model gives the same answer; fixed weights search the params only.
    again = recommend_joint(
        space,
        lambda x: -predict(x),
        np.random.default_rng(0),
        score_names=SCORES,
        candidates=20_000,
        direction="maximize",
    )
    np.testing.assert_allclose(again.weights, rec.weights)
    fixed = recommend_joint(
        space,
        predict,
        np.random.default_rng(0),
        score_names=SCORES,
        candidates=2_000,
        weights=[0.2, 0.2, 0.6],
    )
    np.testing.assert_allclose(fixed.weights, [0.2, 0.2, 0.6])
    assert rec.candidates == 20_000 and rec.top_k == 10


# --- the offline method --------------------------------------------------------------------------


CONFIG = {"quality_scores": ["s1", "s2"]}


def test_quadmix_passes_the_conformance_check() -> None:
    assert get_method("offline", "quadmix") is QuadMixMixer
    check_offline_mixer(QuadMixMixer, {"seed": 1, **CONFIG}, generic_space())
    check_offline_mixer(QuadMixMixer, {"seed": 1, **CONFIG}, three_domains())


def test_proposals_carry_valid_distinct_reproducible_params() -> None:
    space = generic_space()
    mixer = QuadMixMixer.from_config({**CONFIG, "threshold_max": 0.3})
    proposals = mixer.propose(space, [], 32, np.random.default_rng(5))
    assert_valid_mixtures(space, proposals, 32)
    parsed = [QuadMixParams.from_params(p.params, space.names, SCORES) for p in proposals]
    assert max(p.threshold.max() for p in parsed) > 0.2  # the configured range
    x = joint_features(space, [p.weights for p in proposals], parsed)
    assert len(np.unique(x[:, : space.k].round(9), axis=0)) == 32  # distinct weights
    again = mixer.propose(space, [], 32, np.random.default_rng(5))
    assert [p.params for p in again] == [p.params for p in proposals]
    history = [Observation(p.weights, p.params, 1.0) for p in proposals]
    more = mixer.propose(space, history, 8, np.random.default_rng(6))
    w = np.array([p.weights for p in more])
    old = np.array([p.weights for p in proposals])
    assert np.abs(w[:, None, :] - old[None, :, :]).sum(axis=2).min() > 1e-5


def test_a_space_too_narrow_for_distinct_weights_still_gets_count_runs() -> None:
    space = DomainSpace.from_domains([{"name": "web"}])
    mixer = QuadMixMixer.from_config(CONFIG)
    proposals = mixer.propose(space, [], 5, np.random.default_rng(0))
    assert_valid_mixtures(space, proposals, 5)
    assert len({str(p.params) for p in proposals}) == 5
    history = [Observation(p.weights, p.params, 1.0) for p in proposals]
    assert len(mixer.propose(space, history, 3, np.random.default_rng(1))) == 3


@pytest.mark.parametrize(
    ("config", "loc"),
    [
        ({}, ("config", "quality_scores")),
        ({"quality_scores": []}, ("config", "quality_scores")),
        ({"quality_scores": ["a", "a"]}, ("config", "quality_scores")),
        ({"quality_scores": ["ok", "not ok"]}, ("config", "quality_scores")),
        ({**CONFIG, "threshold_max": 0}, ("config", "threshold_max")),
        ({**CONFIG, "steepness_max": -1}, ("config", "steepness_max")),
        ({**CONFIG, "floor": 0.001}, ("config", "floor")),
    ],
)
def test_bad_configs_are_refused_at_the_offending_field(
    config: dict[str, Any], loc: tuple[str, ...]
) -> None:
    with pytest.raises(InvalidInput) as exc:
        QuadMixMixer.parse_config(config)
    assert [e.loc for e in exc.value.errors] == [loc]


def test_config_schema_is_documented() -> None:
    schema = QuadMixConfig.model_json_schema()
    assert schema["required"] == ["quality_scores"]
    assert all("description" in prop for prop in schema["properties"].values())
    cfg = QuadMixMixer.parse_config(CONFIG)
    assert isinstance(cfg, QuadMixConfig)
    assert cfg.param_ranges() == ParamRanges()


# --- the Must-show -------------------------------------------------------------------------------

TRUE_MERGE = np.array([0.9, 0.1, 0.5])  # weight of s1 in each domain's hidden true quality
TARGET_SHARES = np.array([0.5, 0.3, 0.2])
BUDGET = 420.0  # documents the simulated training run consumes


class SimulatedTraining:
    """A stand-in for a proxy run: the loss of training on a QuaDMix sample of a synthetic corpus.

    3 domains of 3000, 2000 and 2000 documents with two quality scores ``s1, s2 ~ N(0, 1)``
    and a hidden true quality ``c_m s1 + (1 - c_m) s2 + 0.3 noise`` (``c = 0.9, 0.1, 0.5``).
    With ``share_m`` the domain's expected share of the sampled tokens, ``π_m`` the sampling
    distribution within it, ``Q_m = Σ π_m q`` its expected true quality and
    ``epochs_m = BUDGET share_m Σ π_m²`` (the budget over the effective number of documents)::

        loss = 3 + Σ_m (share_m - target_m)² + Σ_m share_m (-0.5 Q_m + 0.2 log max(1, epochs_m))

    Quality rewards selective thresholds on the right score; repetition punishes too selective
    ones; the domain term wants shares near (0.5, 0.3, 0.2).
    """

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.labels = np.repeat(np.arange(3), (3000, 2000, 2000))
        s = rng.normal(size=(len(self.labels), 2))
        self.scores = {"s1": s[:, 0], "s2": s[:, 1]}
        c = TRUE_MERGE[self.labels]
        self.quality = c * s[:, 0] + (1 - c) * s[:, 1] + 0.3 * rng.normal(size=len(self.labels))

    def loss(self, weights: Any, params: QuadMixParams) -> float:
        r = sampling_probabilities(self.scores, self.labels, params, weights)
        share = r.domain_share
        loss = 3.0 + float(np.sum((share - TARGET_SHARES) ** 2))
        for m in range(3):
            if share[m] <= 0:
                continue
            pi = r.token_share[self.labels == m] / share[m]
            epochs = BUDGET * share[m] * float(pi @ pi)
            q = float(pi @ self.quality[self.labels == m])
            loss += share[m] * (-0.5 * q + 0.2 * np.log(max(1.0, epochs)))
        return loss


def _must_show(seed: int) -> dict[str, float]:
    space = three_domains()
    sim = SimulatedTraining()
    mixer = QuadMixMixer.from_config(CONFIG)
    runs = mixer.propose(space, [], 96, np.random.default_rng(seed))
    params = [QuadMixParams.from_params(r.params, DOMAINS, SCORES) for r in runs]
    y = np.array([sim.loss(r.weights, p) for r, p in zip(runs, params, strict=True)])
    x = joint_features(space, [r.weights for r in runs], [r.params for r in runs], SCORES)
    model = make_regressor("lightgbm", 0).fit(x, y)
    rec = recommend_joint(
        space, model.predict, np.random.default_rng(seed + 1), score_names=SCORES, candidates=8_192
    )
    achieved = sim.loss(rec.weights, rec.params)

    rng = np.random.default_rng(seed + 2)
    random_params = sample_params(space, SCORES, 96, rng)
    random_weights = dirichlet_design(space, 96, rng)
    joint = np.array([sim.loss(w, p) for w, p in zip(random_weights, random_params, strict=True)])
    at_weights = np.array([sim.loss(rec.weights, p) for p in random_params])
    return {
        "recommended": achieved,
        "predicted": rec.predicted,
        "best_run": float(y.min()),
        "joint_mean": float(joint.mean()),
        "joint_q25": float(np.quantile(joint, 0.25)),
        "params_mean": float(at_weights.mean()),
        "params_q25": float(np.quantile(at_weights, 0.25)),
        "params_beaten": float(np.mean(at_weights > achieved)),
        "s1_merge_web": float(rec.params.merge[0, 0]),
        "s1_merge_code": float(rec.params.merge[1, 0]),
    }


def _assert_must_show(fig: dict[str, float]) -> None:
    # Lower loss is better; "q25" of the losses is the 75th percentile of the random draws' merit.
    assert fig["recommended"] < fig["joint_mean"]
    assert fig["recommended"] < fig["joint_q25"]
    assert fig["recommended"] < fig["params_mean"]
    assert fig["recommended"] < fig["params_q25"]
    # The regressor read the hidden merge: web's quality is mostly s1, code's mostly s2.
    assert fig["s1_merge_web"] > fig["s1_merge_code"]


def test_recommended_params_beat_random_params() -> None:
    _assert_must_show(_must_show(0))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_recommended_params_beat_random_params_across_seeds(seed: int) -> None:
    _assert_must_show(_must_show(seed))
