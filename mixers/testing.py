"""Checks every mixing method must pass, shared by the test suite (and by plug-in authors).

Plain ``assert``s and no pytest import, so the module stays a pure part of the library: call
``check_offline_mixer`` from a test for each new offline method.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mixers.base import SUM_TOLERANCE, DomainSpace, Observation, Proposal
from mixers.offline.base import OfflineMixer

__all__ = ["assert_valid_mixtures", "check_offline_mixer"]


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
    proposals back as history, and mutates neither the space nor the history.
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
