"""``doremi``: DoReMi's online domain reweighting (Xie et al. 2023), one update per feedback.

* excess loss ``lambda_i = max(L_i - L_ref_i, 0)`` from the segment's per-domain loss and the
  reference losses (``config.reference_losses``). The trainer reports per-domain means, so the
  clip is on the domain mean, not per token as in the repo. Domains the feedback omits keep
  their previous ``lambda`` (as in the repo).
* exponentiated gradient ``alpha <- softmax(log alpha + eta lambda)``, then smoothing toward
  uniform ``alpha <- (1 - c) alpha + c / K`` (paper defaults eta = 1, c = 1e-3); ``c > 0`` is the
  exploration floor: no weight ever reaches 0.
* ``recommend`` gives the time-average of the weights played, DoReMi's output.

``config.reference_run`` names a completed run whose final losses serve as the reference; the
service resolves it into ``reference_losses``. A domain with no reference loss is compared with
0 (its excess is its loss).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from mixers.base import DomainSpace, ExperimentSetup, FloatArray
from mixers.online.base import (
    Decision,
    Feedback,
    OnlineConfig,
    OnlineMixer,
    State,
    count_round,
)
from mixers.online.odm import clean_losses, play, softmax
from mixers.registry import register
from mixopt.errors import ErrorItem, InvalidInput, NotFound

__all__ = ["DoremiConfig", "DoremiMixer", "doremi_update", "excess_losses"]


def excess_losses(
    losses: dict[str, float], reference: dict[str, float], previous: dict[str, float]
) -> dict[str, float]:
    """``max(L - L_ref, 0)`` for the reported domains; the others keep their previous value."""
    out = dict(previous)
    for name, loss in losses.items():
        out[name] = max(loss - float(reference.get(name, 0.0)), 0.0)
    return out


def doremi_update(
    alpha: FloatArray, excess: FloatArray, step_size: float, smoothing: float
) -> FloatArray:
    """``softmax(log alpha + eta lambda)`` smoothed toward uniform by ``c``."""
    k = len(alpha)
    logits = np.log(np.maximum(alpha, 1e-300)) + step_size * excess
    new: FloatArray = (1.0 - smoothing) * softmax(logits) + smoothing / k
    return new


class DoremiConfig(OnlineConfig):
    reference_losses: dict[str, float] | None = Field(
        default=None,
        description="domain -> loss of the reference model (e.g. a stratified run's final "
        "held-out losses); the excess loss is measured against it",
    )
    reference_run: str | None = Field(
        default=None,
        description="a completed run whose final losses are the reference; the service "
        "resolves it into reference_losses",
    )
    step_size: float = Field(
        default=1.0, gt=0, allow_inf_nan=False, description="eta of the EG step (paper: 1)"
    )
    smoothing: float = Field(
        default=1e-3,
        gt=0,
        le=1,
        description="c in alpha <- (1 - c) alpha + c / K: the floor toward uniform (paper: 1e-3)",
    )
    signal: Literal["train", "eval"] = Field(
        default="train",
        description="which reported loss to compare with the reference: the segment's "
        "train_losses (as DoReMi's proxy does) or the held-out eval_losses",
    )


@register
class DoremiMixer(OnlineMixer[DoremiConfig]):
    name: ClassVar[str] = "doremi"
    description: ClassVar[str] = (
        "DoReMi (Xie et al. 2023): exponentiated-gradient steps on the clipped excess loss over "
        "a reference (config.reference_losses or config.reference_run), smoothed toward "
        "uniform; the recommendation is the time-averaged weights."
    )

    def complete_config(self, setup: ExperimentSetup) -> DoremiConfig:
        """``reference_run``: its final eval losses become ``reference_losses``, stored with
        the experiment, so every later update uses the same reference."""
        config = self.config
        run_id = config.reference_run
        if run_id is None or config.reference_losses is not None:
            return config
        loc = ("config", "reference_run")
        try:
            run = setup.find_run(run_id)
        except NotFound:
            raise InvalidInput.at(loc, f"run {run_id!r} not found") from None
        if run.status != "completed":
            raise InvalidInput.at(loc, f"run {run_id} is {run.status}, not completed")
        if not run.eval_losses:
            raise InvalidInput.at(loc, f"run {run_id} reported no eval_losses")
        return config.model_copy(update={"reference_losses": dict(run.eval_losses)})

    def check_space(self, space: DomainSpace) -> None:
        """A reference is required (checked here, so that ``{}`` still parses as a config)."""
        ref = self.config.reference_losses
        if ref is None:
            if self.config.reference_run is None:
                raise InvalidInput.at(("config",), "give reference_losses or reference_run")
            return
        errors = [
            ErrorItem(("config", "reference_losses", key), f"unknown domain {key!r}")
            for key in ref
            if key not in space.names
        ]
        missing = [name for name in space.names if name not in ref]
        if missing:
            errors.append(
                ErrorItem(("config", "reference_losses"), f"missing domains: {', '.join(missing)}")
            )
        errors += [
            ErrorItem(("config", "reference_losses", key), "loss must be a finite number")
            for key, value in ref.items()
            if not np.isfinite(value)
        ]
        if errors:
            raise InvalidInput("reference_losses must give every domain a loss", errors)

    def init_state(self, space: DomainSpace, seed: int) -> State:
        uniform = 1.0 / space.k
        return {
            "rounds": 0,
            "tokens": {},
            "alpha": dict.fromkeys(space.names, uniform),
            "excess": {},
            "played_sum": dict.fromkeys(space.names, 0.0),
        }

    def _alpha(self, space: DomainSpace, state: State) -> FloatArray:
        stored = state.get("alpha", {})
        return np.array([float(stored.get(name, 1.0 / space.k)) for name in space.names])

    def decide(self, space: DomainSpace, state: State) -> Decision:
        weights = play(space, self._alpha(space, state), self.config.smoothing)
        return Decision(weights, self.config.segment_steps, "exploit")

    def observe(self, space: DomainSpace, state: State, feedback: Feedback) -> State:
        config = self.config
        new = count_round(state, feedback)
        played = self.decide(space, state).weights
        summed = state.get("played_sum", {})
        new["played_sum"] = {
            name: float(summed.get(name, 0.0)) + float(w)
            for name, w in zip(space.names, played, strict=True)
        }
        reported = feedback.train_losses if config.signal == "train" else feedback.eval_losses
        excess = excess_losses(
            clean_losses(space, reported),
            dict(config.reference_losses or {}),
            {k: float(v) for k, v in state.get("excess", {}).items()},
        )
        vector = np.array([excess.get(name, 0.0) for name in space.names])
        alpha = doremi_update(self._alpha(space, state), vector, config.step_size, config.smoothing)
        new["excess"] = excess
        new["alpha"] = {name: float(a) for name, a in zip(space.names, alpha, strict=True)}
        return new

    def recommend(self, space: DomainSpace, state: State) -> FloatArray:
        summed = state.get("played_sum", {})
        total = np.array([float(summed.get(name, 0.0)) for name in space.names])
        if int(state.get("rounds", 0)) == 0 or total.sum() <= 0:
            return self.decide(space, state).weights
        return play(space, total / total.sum())
