"""Online mixing for a training loop: a sampler that follows changing weights, and a trainer that
drives an online run of the service (ODM, Aioli, DoReMi, ...) with the proxy model.

``MixtureSampler`` is framework-agnostic: any PyTorch loop can draw ``(x, y, domain)`` sequences
from it, change its weights whenever the service answers, and report the tokens it drew per
domain. ``train_online`` is the whole loop for the proxy model::

    mixture = OnlineMixture.start(client, experiment_id, "main", total_steps=proxy.train.steps)
    result = train_online(corpus, mixture, proxy, checkpoint=Path("online.pt"))
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name
from numpy.typing import NDArray
from torch.utils.data import IterableDataset, get_worker_info

from mixopt.client.errors import ConflictError
from proxy_trainer.config import ProxyConfig
from proxy_trainer.corpus.format import Corpus, SplitName
from proxy_trainer.train import RESUMABLE_CHANGES, Trainer

if TYPE_CHECKING:
    from mixopt.client import OnlineMixture

__all__ = [
    "ONLINE_CHECKPOINT_FORMAT",
    "MixtureSampler",
    "OnlineResult",
    "OnlineTrainer",
    "checkpointed_run",
    "train_online",
]

ONLINE_CHECKPOINT_FORMAT = "mixopt.online-checkpoint.v1"

log = logging.getLogger("proxy_trainer.online")

SampledSequence = tuple[torch.Tensor, torch.Tensor, int]
"""One draw: ``x``, ``y`` (the window shifted by one) and the domain's index."""


class MixtureSampler(IterableDataset[SampledSequence]):
    """An endless stream of training sequences whose domain is drawn by the current weights.

    Each draw picks a domain with probability proportional to its weight, then a uniformly random
    window of ``block_size + 1`` consecutive tokens of that domain's ``split`` (windows may cross
    document boundaries, as in nanoGPT); it yields ``x = window[:-1]``, ``y = window[1:]`` (int64
    tensors) and the domain's index in ``domains``. Every draw counts ``block_size`` tokens for
    its domain. ``set_weights`` takes effect from the next draw.

    It is one random stream. In a ``DataLoader`` use ``num_workers=0``: worker processes hold
    copies of the sampler, so ``set_weights``, the token counts and ``state_dict`` of the main
    process would not see them. (Should it run in workers anyway, each worker reseeds from
    ``(seed, worker id)`` so that they do not yield the same sequences.)

    ``weights`` default to uniform over ``domains`` (default: every domain of the corpus);
    domains missing from a weights mapping get weight 0.
    """

    def __init__(
        self,
        corpus: Corpus,
        block_size: int,
        *,
        weights: Mapping[str, float] | None = None,
        seed: int = 0,
        split: SplitName = "train",
        domains: Sequence[str] | None = None,
    ) -> None:
        if block_size < 1:
            raise ValueError("block_size must be >= 1")
        self.corpus = corpus
        self.block_size = block_size
        self.seed = seed
        self.split: SplitName = split
        self.domains: tuple[str, ...] = tuple(domains) if domains is not None else corpus.domains
        if not self.domains:
            raise ValueError("the sampler needs at least one domain")
        self._tokens: list[NDArray[np.uint8]] = [
            corpus.split(d, split).tokens for d in self.domains
        ]
        self._index = {d: i for i, d in enumerate(self.domains)}
        self._rng = np.random.default_rng(seed)
        self._seen = np.zeros(len(self.domains), dtype=np.int64)
        self._segment = np.zeros(len(self.domains), dtype=np.int64)
        self._weights = np.zeros(len(self.domains))
        self._cumulative = np.zeros(len(self.domains))
        self.set_weights(weights if weights is not None else dict.fromkeys(self.domains, 1.0))

    # --- weights ---

    @property
    def weights(self) -> dict[str, float]:
        """The current weights, normalised to sum 1."""
        return {d: float(w) for d, w in zip(self.domains, self._weights, strict=True)}

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Sample by ``weights`` from the next draw on (normalised; missing domains get 0)."""
        values = np.zeros(len(self.domains))
        for domain, weight in weights.items():
            if domain not in self._index:
                raise ValueError(
                    f"unknown domain {domain!r}: the sampler has {', '.join(self.domains)}"
                )
            value = float(weight)
            if not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"the weight of domain {domain!r} must be finite and >= 0: {weight}"
                )
            if value > 0 and len(self._tokens[self._index[domain]]) <= self.block_size:
                raise ValueError(
                    f"domain {domain!r} has {len(self._tokens[self._index[domain]])} "
                    f"{self.split} tokens, too few for one sequence of {self.block_size + 1}; "
                    "give it weight 0"
                )
            values[self._index[domain]] = value
        total = values.sum()
        if not total > 0:
            raise ValueError("the weights must sum to more than 0")
        self._weights = values / total
        # A draw u in [0, 1) picks the domain whose interval [c_{i-1}, c_i) holds it; a weight-0
        # domain's interval is empty. The bounds from the last weighted domain on are exactly 1,
        # so that rounding in the sums can neither leave a gap nor reach a weight-0 domain.
        self._cumulative = np.cumsum(self._weights)
        self._cumulative[int(np.flatnonzero(values)[-1]) :] = 1.0

    # --- drawing ---

    def draw(self) -> tuple[NDArray[np.uint8], int]:
        """One window of ``block_size + 1`` tokens and its domain index."""
        index = int(np.searchsorted(self._cumulative, self._rng.random(), side="right"))
        tokens = self._tokens[index]
        start = int(self._rng.integers(0, len(tokens) - self.block_size))
        self._seen[index] += self.block_size
        self._segment[index] += self.block_size
        return np.asarray(tokens[start : start + self.block_size + 1]), index

    def __iter__(self) -> Iterator[SampledSequence]:
        worker = get_worker_info()
        if worker is not None and worker.num_workers > 1:
            # This is a worker process's own copy: give it a stream of its own.
            self._rng = np.random.default_rng([self.seed, worker.id])
        while True:
            window, index = self.draw()
            sequence = torch.from_numpy(window.astype(np.int64))
            yield sequence[:-1], sequence[1:], index

    def batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``batch_size`` draws stacked: ``x`` and ``y`` of shape (B, block_size), int64, and
        the domain index of each row. The same draws as ``batch_size`` steps of iteration."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        windows = np.empty((batch_size, self.block_size + 1), dtype=np.int64)
        domains = np.empty(batch_size, dtype=np.int64)
        for row in range(batch_size):
            windows[row], domains[row] = self.draw()
        sequences = torch.from_numpy(windows)
        x, y = sequences[:, :-1].contiguous(), sequences[:, 1:].contiguous()
        return x, y, torch.from_numpy(domains)

    # --- token counts ---

    def tokens_seen(self) -> dict[str, int]:
        """Tokens drawn per domain since the start (kept across ``state_dict`` restarts)."""
        return {d: int(n) for d, n in zip(self.domains, self._seen, strict=True)}

    def take_tokens(self) -> dict[str, int]:
        """Tokens drawn per domain since the last call (the current segment), then reset."""
        taken = {d: int(n) for d, n in zip(self.domains, self._segment, strict=True)}
        self._segment[:] = 0
        return taken

    # --- checkpoints ---

    def state_dict(self) -> dict[str, Any]:
        """Everything that decides the rest of the stream, as plain Python values."""
        return {
            "domains": list(self.domains),
            "block_size": self.block_size,
            "rng": self._rng.bit_generator.state,
            "weights": self.weights,
            "tokens_seen": self.tokens_seen(),
            "segment_tokens": {d: int(n) for d, n in zip(self.domains, self._segment, strict=True)},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the stream exactly where ``state_dict`` left it."""
        if list(state["domains"]) != list(self.domains) or state["block_size"] != self.block_size:
            raise ValueError(
                f"the sampler state is for domains {state['domains']} and block_size "
                f"{state['block_size']}, not {list(self.domains)} and {self.block_size}"
            )
        rng = np.random.default_rng()
        rng.bit_generator.state = dict(state["rng"])
        self.set_weights(state["weights"])
        self._rng = rng
        self._seen = np.array([int(state["tokens_seen"][d]) for d in self.domains])
        self._segment = np.array([int(state["segment_tokens"][d]) for d in self.domains])


# --- the online proxy trainer -------------------------------------------------------------------


@dataclass
class OnlineResult:
    """What an online proxy run gives back.

    ``val_losses``: the final validation loss of every corpus domain (empty when stopped early).
    ``metrics``: what the run was completed with: ``val_loss/<domain>`` of every corpus domain
    and ``eval_loss/mean`` over the experiment's domains (empty when stopped early).
    ``weights_history``: ``(step, weights)`` the run trained on from ``step`` on: the first
    weights at step 0, then the service's answer to each report (a resumed run keeps the
    history up to its checkpoint). ``steps``: the trainer's step at the end. ``seconds``: wall
    time of this call. ``resumed_from``: the checkpoint's step, when it resumed from one.
    """

    run_id: str
    val_losses: dict[str, float]
    metrics: dict[str, float]
    weights_history: list[tuple[int, dict[str, float]]]
    steps: int
    seconds: float
    stopped: bool = False
    resumed_from: int | None = None
    tokens: dict[str, int] = field(default_factory=dict)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    # weights_only: a checkpoint is data (tensors, numbers, strings), never code to unpickle.
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != ONLINE_CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an online proxy checkpoint ({ONLINE_CHECKPOINT_FORMAT})")
    return state


def checkpointed_run(path: Path) -> str | None:
    """The id of the online run an existing checkpoint belongs to (None: no checkpoint yet).

    After a restart, rebuild that run's mixture with it:
    ``OnlineMixture(client, checkpointed_run(path), total_steps=...)``.
    """
    path = Path(path)
    return str(_read_checkpoint(path)["run_id"]) if path.exists() else None


def _check_same_proxy(saved: Mapping[str, Any], proxy: ProxyConfig, path: Path) -> None:
    old = ProxyConfig.from_dict(saved)
    differs = [
        f"model.{k}" for k, v in proxy.model.to_dict().items() if old.model.to_dict()[k] != v
    ]
    differs += [
        f"train.{k}"
        for k, v in proxy.train.to_dict().items()
        if k not in RESUMABLE_CHANGES and old.train.to_dict()[k] != v
    ]
    if differs:
        raise ValueError(
            f"checkpoint {path} was trained with another proxy config (differs in "
            f"{', '.join(differs)}); delete it to start over"
        )


class OnlineTrainer:
    """Trains the proxy model on the weights an online run of the service serves.

    ``run()`` trains ``proxy.train.steps`` steps on batches of a ``MixtureSampler`` following
    ``mixture.weights``. Whenever ``mixture.due(step)`` (and at the last step) it reports the
    segment: each domain's mean per-sequence training loss over the segment, every experiment
    domain's held-out loss (``Trainer.evaluate``; domains at weight 0 included) and the tokens
    drawn per domain; the answer's weights apply from the next step. With ``report_metrics``
    these losses are also stored as the run's metric points (``train_loss/<d>``,
    ``val_loss/<d>``, ``eval_loss/mean`` at the segment's step). At the end every corpus domain
    is evaluated and the run completed with ``val_loss/<d>`` and ``eval_loss/mean`` (the mean
    over the experiment's domains: the online objective's default).

    ``checkpoint``: written after every report (the trainer, the sampler, the run id, the last
    reported step and the weights history); when it exists at the start, training continues
    from it and ``mixture.resume(step)`` rewinds the service's mixer to that step. It must be of
    ``mixture``'s run (``checkpointed_run`` names it). ``should_stop()`` is asked after every
    step; when true the call returns at once (``stopped``): the steps since the last checkpoint
    are trained again on restart, so segments keep the boundaries the mixer chose.
    ``eval_batches`` overrides ``proxy.train.eval_batches`` (held-out batches per domain).
    """

    def __init__(
        self,
        corpus: Corpus,
        mixture: OnlineMixture,
        proxy: ProxyConfig,
        *,
        checkpoint: Path | None = None,
        report_metrics: bool = True,
        eval_batches: int | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        if eval_batches is not None:
            proxy = proxy.with_train(eval_batches=eval_batches)
        self.corpus = corpus
        self.mixture = mixture
        self.proxy = proxy
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.report_metrics = report_metrics
        self.should_stop = should_stop
        self.domains: tuple[str, ...] = tuple(mixture.weights)
        self.trainer = Trainer(corpus, proxy)
        self.sampler = MixtureSampler(
            corpus,
            proxy.model.block_size,
            weights=mixture.weights,
            seed=proxy.train.seed,
            domains=self.domains,
        )
        self.reported_step = 0
        self.history: list[tuple[int, dict[str, float]]] = []
        self.final: dict[str, float] | None = None
        self.resumed_from: int | None = None
        self._last_eval: dict[str, float] = {}
        self._loss_sums = torch.zeros(len(self.domains), dtype=torch.float64)
        self._sequences = torch.zeros(len(self.domains), dtype=torch.float64)
        if self.checkpoint is not None and self.checkpoint.exists():
            self._restore(_read_checkpoint(self.checkpoint))
        else:
            if mixture.current.step > 0:
                # The run went on past step 0 but no checkpoint survived: start it over.
                mixture.resume(0)
                self.sampler.set_weights(mixture.weights)
            self.history.append((0, dict(mixture.weights)))

    # --- checkpoints ---

    def _restore(self, state: Mapping[str, Any]) -> None:
        path = self.checkpoint
        assert path is not None
        if state["run_id"] != self.mixture.run_id:
            raise ValueError(
                f"checkpoint {path} belongs to online run {state['run_id']}, not "
                f"{self.mixture.run_id}: resume with OnlineMixture(client, "
                f"{state['run_id']!r}, total_steps=...) or delete it to start over"
            )
        _check_same_proxy(state["trainer"]["config"], self.proxy, path)
        self.trainer.restore(state["trainer"])
        self.sampler.load_state_dict(state["sampler"])
        self.reported_step = int(state["reported_step"])
        self.history = [(int(step), dict(weights)) for step, weights in state["history"]]
        self.final = None if state["final"] is None else dict(state["final"])
        self._last_eval = dict(state["last_eval"])
        self.resumed_from = self.trainer.step
        if self.trainer.step < self.proxy.train.steps:
            # Feedback the service took after the checkpoint is superseded; the weights in
            # effect at this step come back (the sampler's own, unless the mixer changed them).
            self.mixture.resume(self.trainer.step)
            self.sampler.set_weights(self.mixture.weights)
        # At the last step only the completion may be missing: the run's mixer state is final.

    def save(self, path: Path) -> None:
        """Write the checkpoint atomically: a temporary file beside it, then ``os.replace``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "format": ONLINE_CHECKPOINT_FORMAT,
            "run_id": self.mixture.run_id,
            "reported_step": self.reported_step,
            "trainer": self.trainer.state(),
            "sampler": self.sampler.state_dict(),
            "history": [[step, weights] for step, weights in self.history],
            "last_eval": self._last_eval,
            "final": self.final,
        }
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            torch.save(state, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    # --- training ---

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimiser step; returns each sequence's mean loss (from the step's own logits)."""
        captured: list[torch.Tensor] = []

        def keep_logits(_module: torch.nn.Module, _args: Any, output: Any) -> None:
            captured.append(output[0].detach())

        handle = self.trainer.model.register_forward_hook(keep_logits)
        try:
            self.trainer.train_step(x, y)
        finally:
            handle.remove()
        # One forward per step (several, in order, if the trainer splits the batch).
        logits = torch.cat(captured)
        if logits.shape[0] != x.shape[0]:
            raise RuntimeError(f"the trainer's forward saw {logits.shape[0]} of {len(x)} rows")
        targets = y.to(logits.device)
        per_token = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
        return per_token.mean(dim=1).cpu()

    def _report(self, step: int) -> None:
        train_losses = {
            d: float(self._loss_sums[i] / self._sequences[i])
            for i, d in enumerate(self.domains)
            if self._sequences[i] > 0
        }
        eval_losses = self.trainer.evaluate(self.domains)
        self.mixture.report(
            step,
            train_losses=train_losses,
            eval_losses=eval_losses,
            tokens=self.sampler.take_tokens(),
        )
        self.sampler.set_weights(self.mixture.weights)
        self.history.append((step, dict(self.mixture.weights)))
        self.reported_step = step
        self._last_eval = eval_losses
        self._loss_sums.zero_()
        self._sequences.zero_()
        if self.report_metrics:
            points = [(f"train_loss/{d}", step, v) for d, v in train_losses.items()]
            points += [(f"val_loss/{d}", step, v) for d, v in eval_losses.items()]
            points.append(("eval_loss/mean", step, sum(eval_losses.values()) / len(eval_losses)))
            self._append_metrics(points)

    def _append_metrics(self, points: list[tuple[str, int, float]]) -> None:
        try:
            self.mixture.client.append_metrics(self.mixture.run_id, points)
        except ConflictError as exc:
            # A segment trained again after a restart stored other values at its step: the
            # curve is for reading only, so training goes on.
            log.warning("metrics of step %d not stored: %s", points[0][1], exc)

    def run(self) -> OnlineResult:
        started = time.perf_counter()
        steps = self.proxy.train.steps
        batch_size = self.proxy.train.batch_size
        trainer = self.trainer
        stopped = False
        while trainer.step < steps:
            x, y, domains = self.sampler.batch(batch_size)
            per_sequence = self.train_step(x, y)
            self._loss_sums.index_add_(0, domains, per_sequence.double())
            self._sequences.index_add_(0, domains, torch.ones(len(domains), dtype=torch.float64))
            step = trainer.step
            # The last step ends a segment too: a mixer that leaves the segments to the trainer
            # (no train_steps) hears from it there.
            if self.mixture.due(step) or step == steps:
                self._report(step)
                if self.checkpoint is not None:
                    self.save(self.checkpoint)
            if step < steps and self.should_stop is not None and self.should_stop():
                stopped = True
                break
        metrics = {} if stopped else self._complete()
        return OnlineResult(
            run_id=self.mixture.run_id,
            val_losses=dict(self.final or {}),
            metrics=metrics,
            weights_history=list(self.history),
            steps=trainer.step,
            seconds=time.perf_counter() - started,
            stopped=stopped,
            resumed_from=self.resumed_from,
            tokens=self.sampler.tokens_seen(),
        )

    def _complete(self) -> dict[str, float]:
        if self.final is None:
            # The last report evaluated the experiment's domains at this step already.
            rest = [d for d in self.corpus.domains if d not in self._last_eval]
            self.final = {**self._last_eval, **self.trainer.evaluate(rest)}
        mean = sum(self.final[d] for d in self.domains) / len(self.domains)
        metrics = {f"val_loss/{d}": v for d, v in self.final.items()}
        metrics["eval_loss/mean"] = mean
        # Completing again with the same metrics is harmless (after a restart at the end).
        self.mixture.complete(metrics)
        if self.checkpoint is not None:
            self.save(self.checkpoint)
        return metrics


def train_online(
    corpus: Corpus,
    mixture: OnlineMixture,
    proxy: ProxyConfig,
    *,
    checkpoint: Path | None = None,
    report_metrics: bool = True,
    eval_batches: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> OnlineResult:
    """Train the proxy through the online run ``mixture``: see ``OnlineTrainer``."""
    return OnlineTrainer(
        corpus,
        mixture,
        proxy,
        checkpoint=checkpoint,
        report_metrics=report_metrics,
        eval_batches=eval_batches,
        should_stop=should_stop,
    ).run()
