"""Checks every mixing method must pass, shared by the test suite (and by plug-in authors).

Plain ``assert``s and no pytest import, so the module stays a pure part of the library: call
``check_offline_mixer`` or ``check_online_mixer`` from a test for each new method.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mixers.base import SUM_TOLERANCE, DomainSpace, Observation, Proposal
from mixers.fitting import REPLICATE_DECIMALS
from mixers.offline.base import OfflineMixer
from mixers.online.base import Feedback, OnlineMixer, State
from mixopt.errors import Conflict, InvalidInput

__all__ = [
    "assert_json_pure",
    "assert_valid_mixtures",
    "assert_valid_weights",
    "check_offline_mixer",
    "check_online_mixer",
    "generic_space",
    "replay",
    "standard_feedback",
]


def generic_space() -> DomainSpace:
    """Five domains with a skewed token prior, a min_weight, a max_weight and binding repetition
    caps: the space every method's conformance checks run in."""
    return DomainSpace.from_domains(
        [
            {"name": "web", "tokens": 500e9, "max_weight": 0.7},
            {"name": "code", "tokens": 100e9},
            {"name": "books", "tokens": 20e9, "min_weight": 0.05},
            {"name": "math", "tokens": 5e9},  # cap 4 * 5e9 / 100e9 = 0.2
            {"name": "wiki", "tokens": 1e9},  # cap 0.04
        ],
        train_tokens=100e9,
        max_epochs=4,
    )


def assert_valid_mixtures(space: DomainSpace, proposals: list[Proposal], count: int) -> None:
    """``count`` proposals, each a finite mixture over the space's domains within its bounds."""
    assert len(proposals) == count, f"asked for {count} proposals, got {len(proposals)}"
    for i, proposal in enumerate(proposals):
        assert isinstance(proposal, Proposal), f"proposal {i} is a {type(proposal).__name__}"
        w = np.asarray(proposal.weights)
        assert w.shape == (space.k,), f"proposal {i} has shape {w.shape}, not ({space.k},)"
        assert np.all(np.isfinite(w)), f"proposal {i} is not finite: {w}"
        assert abs(float(w.sum()) - 1.0) <= SUM_TOLERANCE, f"proposal {i} sums to {w.sum()!r}"
        assert space.contains(w).all(), f"proposal {i} breaks the bounds: {w}"
        # What the service does with a proposal: it must survive the API's own validation.
        space.validate_weights(space.to_dict(w), enforce_bounds=True)
        assert isinstance(dict(proposal.params), dict)


def check_offline_mixer(
    mixer_cls: type[OfflineMixer[Any]], config_dict: Mapping[str, Any], space: DomainSpace
) -> None:
    """The conformance check of an offline method on one space.

    The config parses and fits the space; ``propose`` honours ``count`` (1 and a batch), returns
    valid mixtures within the bounds, is reproducible for the same random state, accepts its own
    proposals back as history, and mutates neither the space nor the history. A finished swarm
    of its own proposals can be fitted, and the fit recommends a valid mixture and predicts
    finite values inside their intervals.
    """
    assert mixer_cls.mode == "offline", f"{mixer_cls.__name__} is not an offline method"
    mixer = mixer_cls.from_config(config_dict)
    mixer.check_space(space)
    frozen = [a.copy() for a in (space.prior, space.lower, space.upper)]

    for count in (1, 8):
        proposals = mixer.propose(space, [], count, np.random.default_rng(0))
        assert_valid_mixtures(space, proposals, count)
        again = mixer_cls.from_config(config_dict).propose(
            space, [], count, np.random.default_rng(0)
        )
        assert len(again) == len(proposals)
        for first, second in zip(proposals, again, strict=True):
            assert np.array_equal(first.weights, second.weights), (
                "propose is not reproducible for the same random state"
            )

    # A second call sees the first batch as history (some finished, one failed).
    first_batch = mixer.propose(space, [], 4, np.random.default_rng(1))
    history = [
        Observation(
            weights=p.weights.copy(),
            params=p.params,
            objective=None if i == 0 else 3.0 + 0.1 * i,
            status="failed" if i == 0 else "completed",
        )
        for i, p in enumerate(first_batch)
    ]
    kept = [obs.weights.copy() for obs in history]
    proposals = mixer.propose(space, history, 4, np.random.default_rng(2))
    assert_valid_mixtures(space, proposals, 4)
    for obs, before in zip(history, kept, strict=True):
        assert np.array_equal(obs.weights, before), "propose mutated the history"
    for array, before in zip((space.prior, space.lower, space.upper), frozen, strict=True):
        assert np.array_equal(array, before), "propose mutated the domain space"

    # What the service does with a finished swarm: fit it, recommend, predict.
    swarm = mixer.propose(space, [], 12, np.random.default_rng(3))
    assert_valid_mixtures(space, swarm, 12)
    finished = [
        Observation(
            weights=p.weights,
            params=p.params,
            objective=3.0 + float(np.dot(p.weights, np.linspace(-0.5, 0.5, space.k))),
            run_id=f"run-{i}",
        )
        for i, p in enumerate(swarm)
    ]
    distinct = len(np.unique(np.round([p.weights for p in swarm], REPLICATE_DECIMALS), axis=0))
    try:
        fit = mixer.fit(space, finished, "linear", direction="minimize")
    except Conflict:
        # One mixture over and over (``fixed``): there is nothing to cross-validate.
        assert distinct < 2, "fit refused a swarm of distinct mixtures"
        return
    assert fit.n_runs == 12 and len(fit.names) == len(mixer.feature_names(space))
    recommendation = mixer.recommend(space, fit, np.random.default_rng(4))
    assert_valid_mixtures(space, [Proposal(recommendation.weights, recommendation.params)], 1)
    weights = np.array([p.weights for p in swarm])
    features = mixer.features(space, weights, [p.params for p in swarm])
    for prediction in mixer.predict(fit, features):
        assert math.isfinite(prediction.value), prediction
        assert prediction.low <= prediction.value <= prediction.high, prediction


# --- online ---------------------------------------------------------------------------------------


def assert_json_pure(value: Any, path: str = "state") -> None:
    """Only dicts with str keys, lists, str, int, float (finite), bool and None: what the
    service can store and compare."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str, f"{path} has a non-str key {key!r}"
            assert_json_pure(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            assert_json_pure(item, f"{path}[{i}]")
    else:
        assert type(value) in (str, int, float, bool, type(None)), f"{path} is a {type(value)}"
        if type(value) is float:
            assert math.isfinite(value), f"{path} is {value}"


def assert_valid_weights(space: DomainSpace, weights: Any) -> None:
    """A mixture within the bounds in which only a domain whose upper bound is 0 gets nothing
    (an online mixer must keep exploring every domain it may train on)."""
    w = np.asarray(weights, dtype=float)
    assert w.shape == (space.k,)
    assert np.all(np.isfinite(w)), w
    assert abs(float(w.sum()) - 1.0) <= SUM_TOLERANCE, w
    assert space.contains(w).all(), w
    space.validate_weights(space.to_dict(w), enforce_bounds=True)
    assert np.all(w[space.upper > 0] > 0), w


def replay(
    mixer: OnlineMixer[Any], space: DomainSpace, state: State, feedback: Sequence[Feedback]
) -> list[State]:
    """Every state from ``state`` through each feedback, checking each decision and that
    ``observe`` leaves its input untouched and returns JSON-pure state."""
    states = [state]
    for fb in feedback:
        decision = mixer.decide(space, state)
        assert_valid_weights(space, decision.weights)
        assert decision.train_steps is None or decision.train_steps >= 1
        assert isinstance(decision.phase, str) and decision.phase
        before = copy.deepcopy(state)
        state = mixer.observe(space, state, fb)
        assert states[-1] == before, "observe mutated its input state"
        assert_json_pure(state)
        states.append(state)
    assert_valid_weights(space, mixer.decide(space, state).weights)
    assert_valid_weights(space, mixer.recommend(space, state))
    return states


def standard_feedback(space: DomainSpace, rounds: int = 12) -> list[Feedback]:
    """Complete, well-formed reports: losses falling with the steps, per domain apart."""
    out = []
    for r in range(1, rounds + 1):
        losses = {n: 2.0 + 0.1 * i + 1.0 / r for i, n in enumerate(space.names)}
        out.append(
            Feedback(
                step=100 * r,
                train_losses=losses,
                eval_losses={n: v + 0.05 for n, v in losses.items()},
                tokens=dict.fromkeys(space.names, 1000),
            )
        )
    return out


def check_online_mixer(
    mixer_cls: type[OnlineMixer[Any]],
    config_dict: Mapping[str, Any],
    space: DomainSpace,
    feedback: Sequence[Feedback] | None = None,
    seed: int = 0,
) -> None:
    """The conformance check of an online method on one space.

    The config parses and fits the space; well-formed feedback passes ``check_feedback`` and
    feedback naming an unknown domain does not; the state is JSON-pure and never mutated;
    decisions are valid mixtures within the bounds; the same seed and feedback give the same
    states (a fresh mixer too); a JSON round trip of any state changes nothing; and resuming
    from any saved state and replaying the rest ends in the same state.
    """
    assert mixer_cls.mode == "online", f"{mixer_cls.__name__} is not an online method"
    mixer = mixer_cls.from_config(config_dict)
    mixer.check_space(space)
    feedback = list(standard_feedback(space) if feedback is None else feedback)
    for fb in standard_feedback(space, rounds=2):
        mixer.check_feedback(space, fb)
    stray = Feedback(step=1, train_losses={"no-such-domain": 1.0})
    try:
        mixer.check_feedback(space, stray)
    except InvalidInput:
        pass
    else:
        raise AssertionError("check_feedback accepted a domain the experiment does not have")

    first = mixer.init_state(space, seed)
    assert_json_pure(first)
    states = replay(mixer, space, first, feedback)
    fresh = mixer_cls.from_config(config_dict)
    assert replay(fresh, space, fresh.init_state(space, seed), feedback) == states
    for cut, state in enumerate(states):
        loaded = json.loads(json.dumps(state, allow_nan=False))
        assert loaded == state
        a, b = mixer.decide(space, state), mixer.decide(space, loaded)
        assert np.array_equal(a.weights, b.weights)
        assert (a.train_steps, a.phase) == (b.train_steps, b.phase)
        assert replay(mixer, space, loaded, feedback[cut:])[-1] == states[-1]
