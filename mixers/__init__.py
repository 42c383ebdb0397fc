"""Mixing methods as a pure library: numpy, scipy, scikit-learn, lightgbm.

Never imports the service, a database driver, the web stack or torch.
"""

from __future__ import annotations

from mixers.base import (
    DomainSpace,
    ExperimentSetup,
    MethodConfig,
    Mixer,
    Observation,
    Proposal,
    RunSummary,
)
from mixers.offline.base import OfflineMixer
from mixers.registry import get_method, methods, offline_method, online_method, register

__all__ = [
    "DomainSpace",
    "ExperimentSetup",
    "MethodConfig",
    "Mixer",
    "Observation",
    "OfflineMixer",
    "Proposal",
    "RunSummary",
    "get_method",
    "methods",
    "offline_method",
    "online_method",
    "register",
]
