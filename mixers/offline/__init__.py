"""Offline methods: they design proxy runs, and (from the fitting issue on) fit and recommend."""

from __future__ import annotations

from mixers.offline.fixed import FixedMixer
from mixers.offline.quadmix import QuadMixMixer as QuadMixMixer
from mixers.offline.regmix import RegMixMixer, dirichlet_design

__all__ = ["FixedMixer", "RegMixMixer", "dirichlet_design"]
