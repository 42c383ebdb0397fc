"""Online methods: pure transitions over a JSON state that the service versions."""

from __future__ import annotations

from mixers.online.base import Decision, Feedback, OnlineConfig, OnlineMixer, State
from mixers.online.baselines import FixedOnlineMixer, StratifiedMixer

__all__ = [
    "Decision",
    "Feedback",
    "FixedOnlineMixer",
    "OnlineConfig",
    "OnlineMixer",
    "State",
    "StratifiedMixer",
]
