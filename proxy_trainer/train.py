"""Train one proxy model on one mixture: the loop a worker runs for each claimed run.

``train(corpus, weights, proxy)`` builds a ``Trainer`` (model, AdamW, cosine schedule, seeded
batches), runs ``proxy.train.steps`` optimiser steps, reports the training loss, the learning rate
and every domain's validation loss along the way, and returns a ``TrainResult``. With a
``checkpoint`` path it resumes from that file and saves to it, so that a run interrupted
(``should_stop``) and resumed gives the loss curve of the uninterrupted run.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mixers.offline.quadmix.params import QuadMixParams
from proxy_trainer.batches import (
    Batch,
    MixtureBatches,
    fixed_eval_batches,
    parse_quadmix_params,
    validate_weights,
)
from proxy_trainer.config import ProxyConfig
from proxy_trainer.corpus.format import Corpus
from proxy_trainer.model import GPT

__all__ = ["CHECKPOINT_FORMAT", "EVAL_SEED", "TrainResult", "Trainer", "resolve_device", "train"]

CHECKPOINT_FORMAT = "mixopt.proxy-checkpoint.v1"
EVAL_SEED = 0
"""Seeds the held-out windows: fixed, not the run's seed, so every run of an experiment (any
mixture, any seed) is scored on the same validation tokens."""
RESUMABLE_CHANGES = frozenset({"device", "threads", "checkpoint_every", "log_every"})
"""TrainConfig fields a resumed run may change: where and how it runs, not what it trains."""

MetricPoint = tuple[str, int, float]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when torch sees a GPU, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"``.

    Raises ``ValueError`` for an unknown name or a device this torch cannot use.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"unsupported device {name!r}; use cpu, cuda, cuda:N or auto")
    if not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but torch sees no CUDA GPU")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA GPU(s) visible")
    return device


@dataclass
class TrainResult:
    """What a proxy run gives back.

    ``metrics``: ``val_loss/<domain>`` for every corpus domain (final evaluation; absent when
    the run stopped early), ``train_loss`` (mean over the last ~10 % of the steps),
    ``tokens/<domain>`` (trained tokens) and ``tokens_per_second`` (of this call's steps).
    ``curve``: ``(step, train loss)`` for every step since step 1, resumed steps included.
    ``seconds``: wall time of this call.
    """

    metrics: dict[str, float]
    steps: int
    stopped: bool
    curve: list[tuple[int, float]] = field(default_factory=list)
    parameters: int = 0
    seconds: float = 0.0


def _canonical_params(
    corpus: Corpus, params: Mapping[str, Any] | QuadMixParams | None
) -> dict[str, Any] | None:
    return None if params is None else parse_quadmix_params(corpus, params).to_params()


class Trainer:
    """A proxy model, its optimiser and schedule, and (given ``weights``) its batch source.

    ``Trainer(corpus, proxy)`` seeds torch with ``proxy.train.seed`` and builds the model;
    ``train_step(x, y)`` takes one optimiser step; ``evaluate()`` gives each domain's mean loss
    over its fixed held-out batches. ``save(path)`` / ``Trainer.load(path, corpus)`` carry
    everything a resumed run needs to continue bit for bit.
    """

    def __init__(
        self,
        corpus: Corpus,
        proxy: ProxyConfig,
        *,
        weights: Mapping[str, float] | None = None,
        quadmix_params: Mapping[str, Any] | QuadMixParams | None = None,
    ) -> None:
        if proxy.model.vocab_size < 256:
            raise ValueError("byte-token corpora need ModelConfig.vocab_size >= 256")
        self.corpus = corpus
        self.proxy = proxy
        self.device = resolve_device(proxy.train.device)
        if proxy.train.threads is not None:
            torch.set_num_threads(proxy.train.threads)
        torch.manual_seed(proxy.train.seed)
        self.model = GPT(proxy.model).to(self.device)
        self.optimizer = self.model.configure_optimizer(proxy.train)
        self.step = 0
        self.curve: list[tuple[int, float]] = []
        self.weights = None if weights is None else validate_weights(corpus, weights)
        self.quadmix_params = _canonical_params(corpus, quadmix_params)
        self.batches = (
            None
            if weights is None
            else MixtureBatches(
                corpus,
                weights,
                proxy.model.block_size,
                proxy.train.batch_size,
                proxy.train.seed,
                self.quadmix_params,
            )
        )
        self._eval_batches: dict[str, list[Batch]] = {}

    def lr_at(self, step: int) -> float:
        """nanoGPT's schedule: linear warm-up, then cosine down to ``min_lr_ratio`` of the peak,
        reached at the last step."""
        cfg = self.proxy.train
        if step < cfg.warmup_steps:
            return cfg.learning_rate * (step + 1) / (cfg.warmup_steps + 1)
        decay_steps = cfg.steps - 1 - cfg.warmup_steps
        progress = 1.0 if decay_steps <= 0 else min((step - cfg.warmup_steps) / decay_steps, 1.0)
        min_lr = cfg.learning_rate * cfg.min_lr_ratio
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - min_lr)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batches is None:
            raise ValueError("this Trainer was built without weights: pass batches to train_step")
        x, y, _ = self.batches.next()
        return x, y

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One optimiser step on ``(x, y)`` at the schedule's rate; returns the batch's loss."""
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        _, loss = self.model(x.to(self.device), y.to(self.device))
        assert loss is not None  # targets were given
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.proxy.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.proxy.train.grad_clip)
        self.optimizer.step()
        self.step += 1
        value = float(loss.item())
        self.curve.append((self.step, value))
        return value

    def eval_batches(self, domain: str) -> list[Batch]:
        if domain not in self._eval_batches:
            self._eval_batches[domain] = fixed_eval_batches(
                self.corpus,
                domain,
                self.proxy.model.block_size,
                self.proxy.train.batch_size,
                self.proxy.train.eval_batches,
                EVAL_SEED,
            )
        return self._eval_batches[domain]

    @torch.no_grad()
    def evaluate(self, domains: Iterable[str] | None = None) -> dict[str, float]:
        """Mean validation loss per domain (default: every corpus domain) over its fixed batches."""
        self.model.eval()
        try:
            out: dict[str, float] = {}
            for domain in self.corpus.domains if domains is None else domains:
                losses = []
                for x, y in self.eval_batches(domain):
                    _, loss = self.model(x.to(self.device), y.to(self.device))
                    assert loss is not None
                    losses.append(float(loss.item()))
                out[domain] = sum(losses) / len(losses)
            return out
        finally:
            self.model.train()

    def state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.proxy.to_dict(),
            "weights": self.weights,
            "quadmix_params": self.quadmix_params,
            "step": self.step,
            "curve": [list(point) for point in self.curve],
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "batches": None if self.batches is None else self.batches.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` (of ``read_checkpoint``), saved by a trainer of this run."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.curve = [(int(s), float(v)) for s, v in state["curve"]]
        if self.batches is not None and state["batches"] is not None:
            self.batches.load_state_dict(state["batches"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def save(self, path: Path) -> None:
        """Write the checkpoint atomically: a temporary file beside it, then ``os.replace``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            torch.save(self.state(), tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path, corpus: Corpus) -> Trainer:
        """The trainer saved at ``path``, with its own config, weights and QuaDMix params."""
        state = read_checkpoint(path)
        trainer = cls(
            corpus,
            ProxyConfig.from_dict(state["config"]),
            weights=state["weights"],
            quadmix_params=state["quadmix_params"],
        )
        trainer.restore(state)
        return trainer


def read_checkpoint(path: Path) -> dict[str, Any]:
    # weights_only: a checkpoint is data (tensors, numbers, strings), never code to unpickle.
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a proxy checkpoint ({CHECKPOINT_FORMAT})")
    return state


def _check_same_run(
    state: Mapping[str, Any],
    proxy: ProxyConfig,
    weights: Mapping[str, float] | None,
    quadmix_params: Mapping[str, Any] | None,
    path: Path,
) -> None:
    saved = ProxyConfig.from_dict(state["config"])
    differs = [
        f"model.{k}" for k, v in proxy.model.to_dict().items() if saved.model.to_dict()[k] != v
    ]
    differs += [
        f"train.{k}"
        for k, v in proxy.train.to_dict().items()
        if k not in RESUMABLE_CHANGES and saved.train.to_dict()[k] != v
    ]
    if state["weights"] != weights:
        differs.append("weights")
    if state["quadmix_params"] != quadmix_params:
        differs.append("quadmix_params")
    if differs:
        raise ValueError(
            f"checkpoint {path} belongs to another run (differs in {', '.join(differs)}); "
            "delete it to start over"
        )


def train(
    corpus: Corpus,
    weights: Mapping[str, float],
    proxy: ProxyConfig,
    *,
    quadmix_params: Mapping[str, Any] | QuadMixParams | None = None,
    report: Callable[[list[MetricPoint]], None] | None = None,
    checkpoint: Path | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train a proxy on the mixture ``weights`` (a QuaDMix run: and ``quadmix_params``).

    ``report`` gets lists of ``(name, step, value)``: ``train_loss`` (mean since the previous
    report) and ``lr`` every ``log_every`` steps; ``val_loss/<domain>`` for every domain every
    ``eval_every`` steps and at the end. ``checkpoint``: resumed from when the file exists (it
    must be of this run: ``ValueError`` otherwise), written every ``checkpoint_every`` steps and
    when ``should_stop()`` (asked after every step) turns true; the call then returns at once
    with ``stopped=True``. ``progress(step, steps)`` is called after every step.
    """
    started = time.perf_counter()
    cfg = proxy.train
    if checkpoint is not None and Path(checkpoint).exists():
        state = read_checkpoint(Path(checkpoint))
        canonical_weights = validate_weights(corpus, weights)
        canonical_params = _canonical_params(corpus, quadmix_params)
        _check_same_run(state, proxy, canonical_weights, canonical_params, Path(checkpoint))
        trainer = Trainer(corpus, proxy, weights=weights, quadmix_params=quadmix_params)
        trainer.restore(state)
    else:
        trainer = Trainer(corpus, proxy, weights=weights, quadmix_params=quadmix_params)
    assert trainer.batches is not None
    first_step = trainer.step
    step_seconds = 0.0
    final: dict[str, float] | None = None
    stopped = False
    while trainer.step < cfg.steps:
        tick = time.perf_counter()
        lr = trainer.lr_at(trainer.step)
        x, y = trainer.next_batch()
        trainer.train_step(x, y)
        step_seconds += time.perf_counter() - tick
        step = trainer.step
        points: list[MetricPoint] = []
        if step % cfg.log_every == 0:
            recent = [loss for _, loss in trainer.curve[-cfg.log_every :]]
            points += [("train_loss", step, sum(recent) / len(recent)), ("lr", step, lr)]
        if step % cfg.eval_every == 0 or step == cfg.steps:
            losses = trainer.evaluate()
            points += [(f"val_loss/{d}", step, v) for d, v in losses.items()]
            if step == cfg.steps:
                final = losses
        if report is not None and points:
            report(points)
        if progress is not None:
            progress(step, cfg.steps)
        if step == cfg.steps:
            break
        if should_stop is not None and should_stop():
            if checkpoint is not None:
                trainer.save(Path(checkpoint))
            stopped = True
            break
        if checkpoint is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            trainer.save(Path(checkpoint))
    if not stopped and final is None:  # resumed from a finished run's checkpoint
        final = trainer.evaluate()
        if report is not None:
            report([(f"val_loss/{d}", trainer.step, v) for d, v in final.items()])
    if not stopped and checkpoint is not None:
        trainer.save(Path(checkpoint))  # so a re-delivered finished run does not train again
    return TrainResult(
        metrics=_metrics(trainer, final, (trainer.step - first_step), step_seconds),
        steps=trainer.step,
        stopped=stopped,
        curve=list(trainer.curve),
        parameters=trainer.model.num_parameters(),
        seconds=time.perf_counter() - started,
    )


def _metrics(
    trainer: Trainer, final: dict[str, float] | None, steps: int, step_seconds: float
) -> dict[str, float]:
    metrics: dict[str, float] = {}
    if final is not None:
        metrics.update({f"val_loss/{d}": v for d, v in final.items()})
    if trainer.curve:
        tail = [loss for _, loss in trainer.curve[-max(1, len(trainer.curve) // 10) :]]
        metrics["train_loss"] = sum(tail) / len(tail)
    assert trainer.batches is not None
    metrics.update({f"tokens/{d}": float(n) for d, n in trainer.batches.tokens_seen.items()})
    tokens = steps * trainer.proxy.train.batch_size * trainer.proxy.model.block_size
    metrics["tokens_per_second"] = tokens / step_seconds if step_seconds > 0 else 0.0
    return metrics
