"""QuaDMix (ByteDance, arXiv 2504.16511): data mixing by quality *and* domain.

A QuaDMix run has domain weights and, per domain, the parameters of a document sampling
function over quality scores (``params``). The package holds the method (``method``: its
config and its design), the parameters (``params``: their JSON, encoding and the paper's
Algorithm 1), the sampling function a trainer applies to its documents (``documents``) and the
fit and search over weights and parameters together (``joint``).
"""

from __future__ import annotations

from mixers.offline.quadmix.documents import (
    Normalize,
    Sampling,
    sample_documents,
    sampling_probabilities,
    sampling_values,
)
from mixers.offline.quadmix.joint import (
    JointRecommendation,
    joint_feature_names,
    joint_features,
    recommend_joint,
)
from mixers.offline.quadmix.method import QuadMixConfig, QuadMixMixer
from mixers.offline.quadmix.params import (
    PARAM_KEYS,
    ParamRanges,
    QuadMixParams,
    decode,
    encode,
    feature_names,
    sample_params,
)

__all__ = [
    "PARAM_KEYS",
    "JointRecommendation",
    "Normalize",
    "ParamRanges",
    "QuadMixConfig",
    "QuadMixMixer",
    "QuadMixParams",
    "Sampling",
    "decode",
    "encode",
    "feature_names",
    "joint_feature_names",
    "joint_features",
    "recommend_joint",
    "sample_documents",
    "sample_params",
    "sampling_probabilities",
    "sampling_values",
]
