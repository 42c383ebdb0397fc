"""Properties every registered online mixer must have, whatever the feedback.

Valid weights within the bounds (with no domain at 0 unless its upper bound is 0), a
deterministic and JSON-pure state, ``observe`` that never mutates its input, and resume: replaying
the same feedback from a saved intermediate state ends in the same state.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixers import DomainSpace, methods
from mixers.online.base import Feedback, OnlineMixer
from mixers.registry import online_methods
from mixers.testing import assert_json_pure, check_online_mixer, generic_space, replay

PROPERTY = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def closed_space() -> DomainSpace:
    """Three domains, one of them closed (max_weight 0)."""
    return DomainSpace.from_domains(
        [{"name": "a"}, {"name": "b", "max_weight": 0.0}, {"name": "c", "min_weight": 0.1}]
    )


def single_space() -> DomainSpace:
    return DomainSpace.from_domains([{"name": "only"}])


SPACES = {"bounded": generic_space, "closed": closed_space, "single": single_space}


def method_configs(name: str, space: DomainSpace) -> list[dict[str, Any]]:
    """Configs to test a method with; every method gets at least its defaults."""
    if name == "fixed":
        return [{"weights": space.to_dict(space.project(np.full(space.k, 1 / space.k))[0])}]
    if name == "doremi":
        return [
            {"reference_losses": dict.fromkeys(space.names, 2.0)},
            {"reference_run": "r1", "signal": "eval", "step_size": 5.0},
        ]
    if name == "odm":
        return [{}, {"warmup_steps": 0, "init": "prior", "smoothing": 0.5}]
    if name == "aioli":
        return [{}, {"lp_rounds": 1, "lp_steps": 2, "ema": 0.5, "segment_steps": None}]
    if name == "curves":
        return [
            {},
            {
                "signal": "train",
                "target": {space.names[0]: 1.0},
                "total_steps": 3000,
                "base": "prior",
                "explore": 0.0,
                "warmup_rounds": 1,
            },
        ]
    return [{}]


# Methods that fit a model at every feedback: their hypothesis runs belong to the slow tier.
FITTING = {"curves"}
CASES = []
PROPERTY_CASES = []
for cls in online_methods():
    for space_name, make_space in SPACES.items():
        for i, config in enumerate(method_configs(cls.name, make_space())):
            case_id = f"{cls.name}-{i}-{space_name}"
            marks = [pytest.mark.slow] if cls.name in FITTING else []
            PROPERTY_CASES.append(pytest.param(cls, config, space_name, id=case_id, marks=marks))
            # A fitting method's conformance check takes seconds per case: the fast tier keeps
            # its defaults on one space, the slow tier every config on every space.
            fast = cls.name not in FITTING or (i == 0 and space_name == "single")
            conformance_marks = [] if fast else [pytest.mark.slow]
            CASES.append(pytest.param(cls, config, space_name, id=case_id, marks=conformance_marks))


def make(
    cls: type[OnlineMixer[Any]], config: dict[str, Any], space: DomainSpace
) -> OnlineMixer[Any]:
    mixer = cls.from_config(config)
    mixer.check_space(space)
    return mixer


loss_value = st.one_of(
    st.floats(min_value=0.0, max_value=20.0),
    st.sampled_from([0.0, 1e300, -1.0, math.inf, -math.inf, math.nan, 1e-300]),
    st.floats(allow_nan=True, allow_infinity=True),
)


@st.composite
def feedback_lists(draw: st.DrawFn, names: tuple[str, ...], max_size: int = 24) -> list[Feedback]:
    keys = st.sampled_from([*names, "unknown"])
    losses = st.dictionaries(keys, loss_value, max_size=len(names) + 1)
    count = draw(st.integers(min_value=0, max_value=max_size))
    out = []
    step = 0
    for _ in range(count):
        step += draw(st.integers(min_value=1, max_value=300))
        # Mostly complete, well-behaved reports (so the learning paths run), sometimes anything.
        if draw(st.booleans()):
            level = draw(st.floats(min_value=0.5, max_value=6.0))
            spread = draw(st.floats(min_value=0.0, max_value=1.0))
            train = {n: level + spread * ((i * 7919 + step) % 13) / 13 for i, n in enumerate(names)}
            evals = {
                n: level + spread * ((i * 104729 + step) % 11) / 11 for i, n in enumerate(names)
            }
        else:
            train, evals = draw(losses), draw(losses)
        tokens = draw(st.dictionaries(keys, st.integers(min_value=0, max_value=10**9)))
        out.append(Feedback(step=step, train_losses=train, eval_losses=evals, tokens=tokens))
    return out


@pytest.mark.parametrize(("cls", "config", "space_name"), PROPERTY_CASES)
@PROPERTY
@given(data=st.data(), seed=st.integers(min_value=0, max_value=2**63 - 1))
def test_online_mixers_are_deterministic_json_pure_and_resume_to_the_same_state(
    cls: type[OnlineMixer[Any]],
    config: dict[str, Any],
    space_name: str,
    data: st.DataObject,
    seed: int,
) -> None:
    space = SPACES[space_name]()
    mixer = make(cls, config, space)
    feedback = data.draw(feedback_lists(space.names))

    first = mixer.init_state(space, seed)
    assert_json_pure(first)
    states = replay(mixer, space, first, feedback)

    # Deterministic: the same seed and feedback give the same states (a fresh mixer too).
    again = replay(make(cls, config, space), space, mixer.init_state(space, seed), feedback)
    assert again == states

    # A JSON round trip changes nothing, and the next decision is identical.
    for state in states:
        text = json.dumps(state, allow_nan=False)
        loaded = json.loads(text)
        assert loaded == state
        a, b = mixer.decide(space, state), mixer.decide(space, loaded)
        assert np.array_equal(a.weights, b.weights)
        assert (a.train_steps, a.phase) == (b.train_steps, b.phase)

    # Resume: from a saved (serialised) intermediate state, replaying the rest ends the same.
    cut = data.draw(st.integers(min_value=0, max_value=len(feedback)))
    saved = json.loads(json.dumps(states[cut]))
    resumed = replay(mixer, space, saved, feedback[cut:])
    assert resumed[-1] == states[-1]


@pytest.mark.parametrize(("cls", "config", "space_name"), CASES)
def test_every_online_method_passes_the_conformance_check(
    cls: type[OnlineMixer[Any]], config: dict[str, Any], space_name: str
) -> None:
    check_online_mixer(cls, config, SPACES[space_name]())


def test_the_builtin_online_methods_are_registered() -> None:
    names = {cls.name for cls in methods() if cls.mode == "online"}
    assert {"stratified", "fixed", "odm", "doremi", "aioli", "curves"} <= names
