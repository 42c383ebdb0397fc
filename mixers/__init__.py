"""Mixing methods as a pure library: numpy, scipy, scikit-learn, lightgbm, optuna.

Never imports the service, a database driver, the web stack or torch.
"""

from __future__ import annotations

from mixers.base import DomainSpace, MethodConfig, Mixer, Observation, OfflineMixer, Proposal
from mixers.registry import get_method, methods, register

__all__ = [
    "DomainSpace",
    "MethodConfig",
    "Mixer",
    "Observation",
    "OfflineMixer",
    "Proposal",
    "get_method",
    "methods",
    "register",
]
