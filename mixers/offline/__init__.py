"""Offline methods: they design proxy runs, and (from the fitting issue on) fit and recommend."""

from __future__ import annotations

from mixers.offline.bayes import BayesMixer as BayesMixer
from mixers.offline.fixed import FixedMixer
from mixers.offline.quadmix import QuadMixMixer as QuadMixMixer
from mixers.offline.regmix import RegMixMixer, dirichlet_design
from mixers.offline.rounds import RoundsMixer as RoundsMixer

__all__ = ["FixedMixer", "RegMixMixer", "dirichlet_design"]
