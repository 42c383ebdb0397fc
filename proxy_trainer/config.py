"""Typed configuration of a proxy model and of its training (no torch import: the CLI, the
worker and the demo read and validate these without loading torch)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Self

__all__ = ["PRESETS", "ModelConfig", "ProxyConfig", "TrainConfig", "preset"]


class _FromDict:
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Build from JSON, refusing unknown keys (a typo must not silently train defaults)."""
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} fields: {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload,no-any-return]


@dataclass(frozen=True)
class ModelConfig(_FromDict):
    """A nanoGPT-style decoder: token and position embeddings, ``n_layer`` pre-norm blocks of
    causal self-attention and an MLP, a final norm and a head tied to the token embedding."""

    vocab_size: int = 256
    """Byte-level tokens: 256."""
    block_size: int = 64
    """Context length in tokens."""
    n_layer: int = 2
    """Transformer blocks."""
    n_head: int = 2
    """Attention heads per block (must divide ``n_embd``)."""
    n_embd: int = 64
    """Width of the residual stream."""
    dropout: float = 0.0
    """Dropout probability (0 for proxy runs: they are far from overfitting)."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_head ({self.n_head}) must divide n_embd ({self.n_embd})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("ModelConfig.dropout must be in [0, 1)")


@dataclass(frozen=True)
class TrainConfig(_FromDict):
    """How a proxy model is trained and evaluated."""

    steps: int = 300
    """Optimiser steps."""
    batch_size: int = 16
    """Sequences per step (``batch_size * block_size`` tokens)."""
    learning_rate: float = 3e-3
    """Peak learning rate of the cosine schedule."""
    min_lr_ratio: float = 0.1
    """The schedule decays to ``learning_rate * min_lr_ratio`` at the last step."""
    warmup_steps: int = 20
    """Linear warm-up steps."""
    weight_decay: float = 0.1
    """AdamW weight decay (matrices only; norms, biases and embeddings are not decayed)."""
    beta1: float = 0.9
    """AdamW first-moment decay."""
    beta2: float = 0.95
    """AdamW second-moment decay."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    seed: int = 0
    """Seeds the initialisation and the batches: the same seed gives the same loss curve."""
    device: str = "cpu"
    """``cpu``, ``cuda``, ``cuda:1``, ... or ``auto`` (CUDA when torch sees a GPU)."""
    threads: int | None = None
    """``torch.set_num_threads``; None leaves torch's default."""
    eval_every: int = 100
    """Evaluate the per-domain validation loss every this many steps (and at the end)."""
    eval_batches: int = 4
    """Fixed held-out batches per domain for each evaluation."""
    log_every: int = 10
    """Report the training loss every this many steps."""
    checkpoint_every: int | None = None
    """Save a checkpoint every this many steps (None: only when asked to stop)."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "eval_batches", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1")
        if self.learning_rate <= 0:
            raise ValueError("TrainConfig.learning_rate must be > 0")
        if self.threads is not None and self.threads < 1:
            raise ValueError("TrainConfig.threads must be >= 1")


@dataclass(frozen=True)
class ProxyConfig(_FromDict):
    """A model and how to train it: what a worker trains each claimed run with."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        unknown = sorted(set(data) - {"model", "train"})
        if unknown:
            raise ValueError(
                f"unknown ProxyConfig fields: {', '.join(unknown)}; known: model, train"
            )
        return cls(
            model=ModelConfig.from_dict(data.get("model", {})),
            train=TrainConfig.from_dict(data.get("train", {})),
        )

    def with_train(self, **changes: Any) -> ProxyConfig:
        return replace(self, train=replace(self.train, **changes))


PRESETS: dict[str, ProxyConfig] = {
    # Sized by `python -m bench.proxy` (one thread of a 2-core machine; tokens/s per size there):
    # tiny 0.12M params at ~50k tokens/s: 300 steps x 1024 tokens in ~6 s (`mixopt demo --quick`).
    "tiny": ProxyConfig(
        ModelConfig(block_size=64, n_layer=2, n_head=2, n_embd=64),
        TrainConfig(steps=300, batch_size=16, eval_every=100),
    ),
    # small 0.48M params at ~16k tokens/s: 350 steps x 2048 tokens in ~45 s (the full demo).
    "small": ProxyConfig(
        ModelConfig(block_size=128, n_layer=4, n_head=4, n_embd=96),
        TrainConfig(steps=350, batch_size=16, eval_every=100),
    ),
    # large 1.55M params (~3x small) at ~7k tokens/s on one thread, faster on both cores:
    # 500 steps x 2048 tokens in ~1.5-2.5 min; the demo's "larger model" trained on the
    # recommended, prior and uniform mixtures.
    "large": ProxyConfig(
        ModelConfig(block_size=128, n_layer=6, n_head=4, n_embd=144),
        TrainConfig(steps=500, batch_size=16, learning_rate=2e-3, eval_every=125),
    ),
}


def preset(name: str) -> ProxyConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
