"""Online methods: pure transitions over a JSON state that the service versions."""

from __future__ import annotations

from mixers.online.aioli import AioliConfig, AioliMixer
from mixers.online.base import Decision, Feedback, OnlineConfig, OnlineMixer, State
from mixers.online.baselines import FixedOnlineMixer, StratifiedMixer
from mixers.online.curves import CurvesConfig, CurvesMixer
from mixers.online.doremi import DoremiConfig, DoremiMixer
from mixers.online.odm import OdmConfig, OdmMixer

__all__ = [
    "AioliConfig",
    "AioliMixer",
    "CurvesConfig",
    "CurvesMixer",
    "Decision",
    "DoremiConfig",
    "DoremiMixer",
    "Feedback",
    "FixedOnlineMixer",
    "OdmConfig",
    "OdmMixer",
    "OnlineConfig",
    "OnlineMixer",
    "State",
    "StratifiedMixer",
]
