"""The offline mixer interface: design proxy runs, fit their results, recommend a mixture.

Like an Optuna sampler, an offline mixer keeps no hidden history: every call is handed the
experiment's runs so far. The defaults fit a regressor from the domain weights to the objective
(``mixers.fitting``), search the mixture it predicts best (``mixers.recommendation``) and replay
the swarm (``mixers.backtest``). A method whose runs have parameters beyond the weights
(QuaDMix) overrides ``check_params``, ``features``, ``feature_names``, ``recommend`` and
``backtest``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from mixers.backtest import Backtest, BacktestPlan, backtest
from mixers.base import (
    ConfigT,
    Direction,
    DomainSpace,
    FloatArray,
    Mixer,
    Mode,
    Observation,
    Proposal,
)
from mixers.fitting import Fit, fit_model, predict, usable_runs
from mixers.recommendation import SEARCH_SECONDS, Prediction, Recommendation, recommend
from mixopt.errors import Conflict, InvalidInput

__all__ = ["OfflineMixer"]


class OfflineMixer(Mixer[ConfigT]):
    mode: ClassVar[Mode] = "offline"

    def best_run_competes(self, runs: int) -> bool:
        """Whether the best of ``runs`` fitted runs may win the recommendation over the searched
        mixture (``recommend``'s ``contest``): only once the method has searched around an
        optimum, so that its best run is a find rather than one lucky draw of a spread design.
        On the simulators of ``bench/methods.py`` the contest added 0.03-0.08 of the gap closed
        to ``rounds`` and ``bayes`` and cost ``regmix``'s one-shot design 0.04-0.07. By default
        (a design method): never."""
        return False

    @abstractmethod
    def propose(
        self,
        space: DomainSpace,
        history: Sequence[Observation],
        count: int,
        rng: np.random.Generator,
    ) -> list[Proposal]:
        """Design ``count`` new mixtures given every run of the experiment so far."""

    def check_params(self, space: DomainSpace, params: Mapping[str, Any]) -> None:
        """Check the ``params`` of a run given from outside (an import): ``InvalidInput``
        located under ``("params", ...)``. By default any JSON object is accepted."""

    def feature_names(self, space: DomainSpace) -> list[str]:
        """The names of the regressor's features: by default the domains."""
        return list(space.names)

    def features(
        self, space: DomainSpace, weights: FloatArray, params: Sequence[Mapping[str, Any]]
    ) -> FloatArray:
        """What the regressor sees of each mixture (rows of ``weights``, space order, with
        its ``params``): by default the weights. ``InvalidInput`` located under ``(i,
        "params", ...)`` for the ``i``-th mixture's bad params."""
        return np.asarray(weights, dtype=float).reshape(-1, space.k)

    def fit(
        self,
        space: DomainSpace,
        history: Sequence[Observation],
        model: str,
        *,
        direction: Direction,
        metric_weights: Mapping[str, float] | None = None,
    ) -> Fit:
        """Cross-validate ``model`` (``auto``: every regressor) on the usable runs, refit it.

        ``metric_weights``: the objective's metrics and weights; when it combines several and
        the runs carry them (``Observation.metrics``), ``auto`` also fits them one by one.
        ``Conflict`` with too few usable runs; ``InvalidInput`` at ``("model",)`` for an
        unknown model.
        """
        usable = usable_runs(history, space.k, metric_weights=metric_weights)
        try:
            features = self.features(space, usable.X, [obs.params for obs in usable.observations])
        except InvalidInput as exc:
            raise Conflict(f"a stored run has params this method cannot read: {exc}") from None
        return fit_model(
            features,
            usable.y,
            usable.run_ids,
            model=model,
            names=self.feature_names(space),
            seed=self.config.seed or 0,
            direction=direction,
            terms=usable.terms,
        )

    def recommend(
        self,
        space: DomainSpace,
        fit: Fit,
        rng: np.random.Generator,
        history: Sequence[Observation] = (),
    ) -> Recommendation:
        """The mixture ``fit`` predicts best, with a search sized to ``SEARCH_SECONDS``: a
        tree ensemble scores far fewer candidates per second than a linear model, so the search
        scores the count its model gets through in that time here (``search_candidates``: by
        model and data shape, not by the clock, so the answer does not depend on the load).
        With the ``history`` the fit was made on, its best usable run is reported, and where
        ``best_run_competes`` it competes with the searched mixture (``recommend``'s ``runs``)."""
        runs = usable_runs(history, space.k, minimum=0) if history else None
        return recommend(
            space,
            fit,
            rng,
            max_seconds=SEARCH_SECONDS,
            runs=runs,
            contest=runs is not None and self.best_run_competes(len(runs.y)),
        )

    def predict(self, fit: Fit, features: FloatArray) -> list[Prediction]:
        """``fit``'s prediction and interval for each row of ``features`` (see ``features``,
        which checks the mixtures: call it first)."""
        value, low, high = predict(fit, features)
        return [
            Prediction(float(v), float(lo), float(hi))
            for v, lo, hi in zip(value, low, high, strict=True)
        ]

    def backtest(
        self,
        space: DomainSpace,
        history: Sequence[Observation],
        plan: BacktestPlan,
        *,
        direction: Direction,
        metric_weights: Mapping[str, float] | None = None,
    ) -> Backtest:
        """Replay the usable runs by design, size and model (``mixers.backtest``); with
        ``metric_weights`` (see ``fit``) ``auto`` rows consider per-metric fits too."""
        usable = usable_runs(history, space.k, metric_weights=metric_weights)
        return backtest(
            space,
            usable.X,
            usable.y,
            usable.run_ids,
            plan,
            direction=direction,
            seed=self.config.seed or 0,
            terms=usable.terms,
            contest=self.best_run_competes(len(usable.y)),
        )
