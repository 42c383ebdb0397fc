"""The example plug-in methods pass the conformance suites every shipped method passes."""

from __future__ import annotations

from mixers.testing import check_offline_mixer, check_online_mixer, generic_space
from tests.example_methods import GreedyMixer, UniformMixer


def test_the_example_offline_method_passes_the_conformance_check() -> None:
    check_offline_mixer(UniformMixer, {"seed": 1}, generic_space())


def test_the_example_online_method_passes_the_conformance_check() -> None:
    check_online_mixer(GreedyMixer, {"seed": 1}, generic_space())
