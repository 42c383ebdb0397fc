"""Application logic between the routes and the store: where the mixers meet the stored runs.

Routes parse and serialise; the store persists; this module validates what needs the experiment's
domains (mixtures, configs) and calls the method registry.
"""

from __future__ import annotations

import csv
import io
import json
import pickle
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import ValidationError

from mixers import DomainSpace, Observation, OfflineMixer, fitting, get_method
from mixers.backtest import backtest as run_backtest
from mixers.base import MethodConfig, Mixer
from mixers.offline import quadmix
from mixers.offline.quadmix import QuadMixConfig, QuadMixParams
from mixers.online import Feedback, OnlineMixer
from mixopt import schemas
from mixopt.errors import Conflict, ErrorItem, Gone, InvalidInput, NotFound
from service.convert import fit_out
from service.store import ExperimentRecord, NewExperiment, NewRun, RunRecord, Store
from service.store.base import StaleVersion, WeightsRecord

__all__ = ["Operations", "objective_value", "space_of"]

QUADMIX_CANDIDATES = 20_000
"""Joint candidates a quadmix fit scores (about 2 s with a 1000-tree model)."""
MAX_BACKTEST_FITS = 200
"""Fits one backtest request may make (each takes up to a few seconds)."""
ONLINE_DEFAULT_OBJECTIVE = {"metrics": {"eval_loss/mean": 1.0}, "direction": "minimize"}


def objective_value(objective: Mapping[str, Any], metrics: Mapping[str, float]) -> float | None:
    """The experiment's objective for a run's metrics, or None if a term is missing."""
    total = 0.0
    for name, weight in objective["metrics"].items():
        if name not in metrics:
            return None
        total += float(weight) * float(metrics[name])
    return total


def space_of(experiment: ExperimentRecord) -> DomainSpace:
    return DomainSpace.from_domains(
        experiment.domains,
        train_tokens=experiment.config.get("train_tokens"),
        max_epochs=experiment.config.get("max_epochs"),
    )


def _mixer(experiment: ExperimentRecord) -> tuple[Mixer, MethodConfig]:
    cls = get_method(experiment.mode, experiment.method)  # type: ignore[arg-type]
    config = cls.parse_config(experiment.config)
    return cls(config), config


class Operations:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._results: dict[str, fitting.FitResult] = {}

    # --- experiments ---

    def create_experiment(self, body: schemas.ExperimentCreate) -> ExperimentRecord:
        try:
            return self._create_experiment(body)
        except InvalidInput as exc:
            raise exc.prefixed("body") from None

    def _create_experiment(self, body: schemas.ExperimentCreate) -> ExperimentRecord:
        try:
            cls = get_method(body.mode, body.method)
        except KeyError:
            known = sorted(m.name for m in _methods_of(body.mode))
            raise InvalidInput.at(
                ("method",),
                f"unknown {body.mode} method {body.method!r}; known: {', '.join(known) or 'none'}",
            ) from None
        config = cls.parse_config(body.config)
        self._resolve_reference_run(config)
        if config.seed is None:
            # Stored, so that every later proposal is reproducible from the experiment alone.
            config.seed = secrets.randbelow(2**31)
        space = DomainSpace.from_domains(
            [d.model_dump() for d in body.domains],
            train_tokens=config.train_tokens,
            max_epochs=config.max_epochs,
        )
        cls(config).check_space(space)
        if body.objective is not None:
            objective = body.objective.model_dump()
        elif body.mode == "online":
            objective = dict(ONLINE_DEFAULT_OBJECTIVE)
        else:
            raise InvalidInput.at(
                ("objective",), "offline experiments need an objective: the metrics to optimise"
            )
        if "direction" in type(config).model_fields:
            # Methods that fit the history (rounds, bayes) optimise in the objective's direction:
            # taken from it, or checked against it when the config names one.
            wanted = objective.get("direction", "minimize")
            if "direction" not in body.config:
                config.direction = wanted  # type: ignore[attr-defined]
            elif config.direction != wanted:  # type: ignore[attr-defined]
                raise InvalidInput.at(
                    ("config", "direction"),
                    f"config.direction {config.direction!r} contradicts the objective's "  # type: ignore[attr-defined]
                    f"direction {wanted!r}; leave it out to follow the objective",
                )
        domains = [
            {
                "name": name,
                "prior": float(prior),
                "tokens": tokens,
                "min_weight": float(lo),
                "max_weight": float(hi),
            }
            for name, prior, tokens, lo, hi in zip(
                space.names,
                space.prior,
                space.tokens,
                space.lower,
                space.declared_upper,
                strict=True,
            )
        ]
        return self.store.create_experiment(
            NewExperiment(
                name=body.name,
                mode=body.mode,
                method=body.method,
                domains=domains,
                objective=objective,
                config=config.model_dump(mode="json"),
            )
        )

    def _resolve_reference_run(self, config: MethodConfig) -> None:
        """DoReMi's ``reference_run``: its final eval losses become ``reference_losses``, stored
        with the experiment, so every later update uses the same reference."""
        run_id = getattr(config, "reference_run", None)
        if run_id is None or getattr(config, "reference_losses", None) is not None:
            return
        loc = ("config", "reference_run")
        try:
            run = self.store.get_run(run_id)
        except NotFound:
            raise InvalidInput.at(loc, f"run {run_id!r} not found") from None
        if run.status != "completed":
            raise InvalidInput.at(loc, f"run {run_id} is {run.status}, not completed")
        losses = (self.store.last_feedback(run_id) or {}).get("eval_losses") or {}
        if not losses:
            raise InvalidInput.at(loc, f"run {run_id} reported no eval_losses")
        config.reference_losses = dict(losses)  # type: ignore[attr-defined]

    # --- offline runs ---

    def _offline(self, experiment_id: str) -> ExperimentRecord:
        experiment = self.store.get_experiment(experiment_id, counts=False)
        if experiment.mode != "offline":
            raise Conflict(
                f"experiment {experiment_id} is online: its runs are training runs "
                'started with POST /experiments/{id}/runs {"name": ...}'
            )
        return experiment

    def propose(self, experiment_id: str, request: schemas.ProposalRequest) -> list[RunRecord]:
        experiment = self._offline(experiment_id)
        if experiment.status != "active":
            raise Gone(f"experiment {experiment_id} is archived and accepts no new runs")
        if request.request_id is not None:
            earlier = self.store.runs_for_request(experiment_id, request.request_id)
            if earlier is not None:
                return earlier
        mixer, config = _mixer(experiment)
        assert isinstance(mixer, OfflineMixer)
        space = space_of(experiment)
        history = self.history(experiment, space)
        # Seeded by the experiment and the number of runs so far: the same sequence of calls
        # gives the same designs, and successive calls give new ones.
        rng = np.random.default_rng([config.seed or 0, len(history)])
        proposals = mixer.propose(space, history, request.count, rng)
        new_runs = [
            NewRun(weights=space.to_dict(p.weights), params=dict(p.params)) for p in proposals
        ]
        return self.store.add_runs(experiment_id, new_runs, request.request_id)

    def history(self, experiment: ExperimentRecord, space: DomainSpace) -> list[Observation]:
        return [obs for _, obs in self._observed(experiment, space)]

    def _observed(
        self, experiment: ExperimentRecord, space: DomainSpace
    ) -> list[tuple[RunRecord, Observation]]:
        """Every run with the mixers' view of it (weights as an array, objective value)."""
        return [
            (
                run,
                Observation(
                    weights=space.to_array(run.weights),
                    params=run.params,
                    objective=objective_value(experiment.objective, run.metrics)
                    if run.status == "completed"
                    else None,
                    status=run.status,
                    excluded=run.excluded,
                ),
            )
            for run in self.store.iter_runs(experiment.id)
        ]

    def add_run(self, experiment_id: str, payload: Mapping[str, Any]) -> tuple[RunRecord, bool]:
        """``POST /experiments/{id}/runs``: the body's schema depends on the experiment's mode."""
        experiment = self.store.get_experiment(experiment_id, counts=False)
        model: type[schemas.RunImport] | type[schemas.OnlineRunCreate] = (
            schemas.RunImport if experiment.mode == "offline" else schemas.OnlineRunCreate
        )
        try:
            body = model.model_validate(payload)
        except ValidationError as exc:
            hint = (
                "offline experiments import runs with their weights"
                if experiment.mode == "offline"
                else 'online experiments start training runs: {"name": ..., "total_steps": ...}'
            )
            raise InvalidInput(
                f"invalid {model.__name__} body ({hint})",
                [ErrorItem(("body", *e["loc"]), e["msg"]) for e in exc.errors()],
            ) from None
        if isinstance(body, schemas.OnlineRunCreate):
            return self._start_online_run(experiment, body)
        return self._import_run(experiment, body)

    def import_run(self, experiment_id: str, body: schemas.RunImport) -> tuple[RunRecord, bool]:
        return self._import_run(self._offline(experiment_id), body)

    def _import_run(
        self, experiment: ExperimentRecord, body: schemas.RunImport
    ) -> tuple[RunRecord, bool]:
        space = space_of(experiment)
        space.validate_weights(body.weights, loc=("body", "weights"))
        _, config = _mixer(experiment)
        if isinstance(config, QuadMixConfig):  # the fit reads them: refuse bad ones now
            QuadMixParams.from_params(
                body.params, space.names, config.quality_scores, loc=("body", "params")
            )
        return self.store.import_run(
            experiment.id,
            NewRun(
                weights=body.weights,
                params=body.params,
                tags=body.tags,
                metrics=body.metrics,
                status=body.resolved_status,
                external_id=body.external_id,
            ),
        )

    def runs_csv(self, experiment_id: str) -> Iterator[str]:
        """Every run as CSV rows: ``weight/<domain>``, ``metric/<name>``, ``tag/<key>`` columns.

        ``mixopt runs import`` reads this format back. The prefixes cannot clash with names:
        a column's kind is what stands before its first slash.
        """
        experiment = self.store.get_experiment(experiment_id, counts=False)
        runs = list(self.store.iter_runs(experiment_id))
        return _csv_rows(experiment, runs)

    # --- fits ---

    def fit(self, experiment_id: str, body: schemas.FitRequest) -> schemas.FitReport:
        """Cross-validate, refit, search the recommendation; store all of it in one fit.

        CPU-bound: the route runs it in the thread pool, off the event loop.
        """
        experiment = self._offline(experiment_id)
        _, config = _mixer(experiment)
        space = space_of(experiment)
        usable = self._usable(experiment, space)
        direction = experiment.objective.get("direction", "minimize")
        seed = config.seed or 0
        features, names = _features(
            config,
            space,
            np.array([obs.weights for _, obs in usable]),
            [obs.params for _, obs in usable],
            loc=("runs",),
        )
        result = fitting.fit_model(
            features,
            np.array([obs.objective for _, obs in usable], dtype=float),
            [run_id for run_id, _ in usable],
            model=body.model,
            names=names,
            seed=seed,
            direction=direction,
        )
        rng = np.random.default_rng([seed, len(usable)])
        if isinstance(config, QuadMixConfig):
            recommendation = _recommend_quadmix(space, config, result, rng)
        else:
            # Bounded in time: a tree ensemble scores far fewer candidates per second than a
            # linear model, so the search scores as many as fit in the budget.
            recommendation = fitting.recommend(space, result, rng, max_seconds=3.0)
        report = result.report()
        record = self.store.add_fit(
            experiment.id,
            model=result.model,
            requested=body.model,
            n_runs=result.n_runs,
            report=report,
            recommendation=recommendation,
            blob=pickle.dumps(result),
        )
        return fit_out(record)

    def _usable(
        self, experiment: ExperimentRecord, space: DomainSpace
    ) -> list[tuple[str, Observation]]:
        """The runs a fit learns from, oldest first; ``Conflict`` when there are too few."""
        usable = [
            (run.id, obs)
            for run, obs in self._observed(experiment, space)
            if obs.status == "completed" and not obs.excluded and obs.objective is not None
        ]
        if len(usable) < fitting.MIN_RUNS:
            raise Conflict(
                f"fewer than {fitting.MIN_RUNS} usable runs (completed, not excluded, with "
                f"every objective metric): {len(usable)}"
            )
        return usable

    def backtest(self, experiment_id: str, body: schemas.BacktestRequest) -> schemas.BacktestReport:
        """Replay the experiment's usable runs (``mixers.backtest``); CPU-bound, stores nothing."""
        experiment = self._offline(experiment_id)
        _, config = _mixer(experiment)
        if isinstance(config, QuadMixConfig):
            raise Conflict(
                "backtest replays mixtures alone; a quadmix experiment's runs also differ by "
                "their sampling parameters"
            )
        space = space_of(experiment)
        usable = self._usable(experiment, space)
        result = run_backtest(
            space,
            np.array([obs.weights for _, obs in usable]),
            np.array([obs.objective for _, obs in usable], dtype=float),
            [run_id for run_id, _ in usable],
            models=body.models,
            sizes=body.sizes,
            designs=body.designs,
            reference_model=body.reference_model,
            direction=experiment.objective.get("direction", "minimize"),
            seed=config.seed or 0,
            max_fits=MAX_BACKTEST_FITS,
        )
        return schemas.BacktestReport.model_validate(
            {**result.to_dict(), "experiment_id": experiment.id}
        )

    def predict(self, experiment_id: str, body: schemas.PredictRequest) -> list[schemas.Predicted]:
        experiment = self._offline(experiment_id)
        _, config = _mixer(experiment)
        space = space_of(experiment)
        mixtures = np.array(
            [
                space.validate_weights(m.weights, loc=("body", "mixtures", i, "weights"))
                for i, m in enumerate(body.mixtures)
            ]
        )
        features, _ = _features(
            config, space, mixtures, [m.params for m in body.mixtures], loc=("body", "mixtures")
        )
        result = self._latest_result(experiment_id)
        value, low, high = fitting.predict(result, features)
        return [
            schemas.Predicted(value=float(v), low=float(lo), high=float(hi))
            for v, lo, hi in zip(value, low, high, strict=True)
        ]

    def _latest_result(self, experiment_id: str) -> fitting.FitResult:
        latest = self.store.latest_fit(experiment_id)
        if latest is None or latest[1] is None:
            raise Conflict(f"experiment {experiment_id} has no fit yet: POST .../fit first")
        fit, blob = latest
        assert blob is not None
        cached = self._results.get(fit.id)
        if cached is None:
            # Blobs are written only by this service (never uploaded), so unpickling is safe.
            cached = pickle.loads(blob)
            self._results = {fit.id: cached}  # the latest fit per process is what is asked
        return cached

    # --- online runs ---

    def _online_mixer(self, experiment: ExperimentRecord) -> tuple[OnlineMixer, MethodConfig]:
        mixer, config = _mixer(experiment)
        assert isinstance(mixer, OnlineMixer)
        return mixer, config

    def start_online_run(
        self, experiment_id: str, body: schemas.OnlineRunCreate
    ) -> tuple[RunRecord, bool]:
        experiment = self.store.get_experiment(experiment_id, counts=False)
        if experiment.mode != "online":
            raise InvalidInput.at(
                ("body",),
                f"experiment {experiment_id} is offline: import a run with its weights",
            )
        return self._start_online_run(experiment, body)

    def _start_online_run(
        self, experiment: ExperimentRecord, body: schemas.OnlineRunCreate
    ) -> tuple[RunRecord, bool]:
        experiment_id = experiment.id
        mixer, config = self._online_mixer(experiment)
        space = space_of(experiment)
        state = mixer.init_state(space, config.seed or 0)
        decision = mixer.decide(space, state)
        return self.store.start_online_run(
            experiment_id,
            name=body.name,
            total_steps=body.total_steps,
            tags=body.tags,
            request_id=body.request_id,
            state=state,
            weights=space.to_dict(decision.weights),
            phase=decision.phase,
            train_steps=decision.train_steps,
        )

    def feedback(self, run_id: str, body: schemas.Feedback) -> WeightsRecord:
        """Fold one segment into the run's mixer state, exactly once, whichever replica answers.

        Compare-and-swap on the state's version: a replica that lost the race re-reads the new
        state and applies the feedback to it. A feedback already recorded for this step is
        answered with the current weights (same body) or 409 (another body).
        """
        recorded = body.model_dump(mode="json")
        for _ in range(50):
            context = self.store.feedback_context(run_id, body.step)
            if context.recorded is not None:
                if context.recorded != recorded:
                    raise Conflict(
                        f"feedback for step {body.step} was already recorded with another body"
                    )
                return self.store.get_weights(run_id)
            current, experiment = context.state, context.experiment
            if current.frozen:
                raise Conflict(f"run {run_id} is completed; its mixer state is frozen")
            space = space_of(experiment)
            _check_domains(space, body, experiment.method)
            mixer, _ = self._online_mixer(experiment)
            feedback = Feedback(
                step=body.step,
                train_losses=body.train_losses,
                eval_losses=body.eval_losses,
                tokens=body.tokens,
                version=body.version,
            )
            state = mixer.observe(space, current.state, feedback)
            decision = mixer.decide(space, state)
            try:
                return self.store.apply_feedback(
                    run_id,
                    expected_version=current.version,
                    step=body.step,
                    body=recorded,
                    state=state,
                    weights=space.to_dict(decision.weights),
                    phase=decision.phase,
                    train_steps=decision.train_steps,
                )
            except StaleVersion:
                continue
        raise Conflict(f"run {run_id}: too many concurrent updates; retry")

    def recommendation(self, experiment_id: str) -> schemas.Recommendation:
        """Offline: the latest fit's stored recommendation (no search here). Online: the weights
        to reuse for a fresh run."""
        experiment = self.store.get_experiment(experiment_id, counts=False)
        if experiment.mode == "online":
            return self.online_recommendation(experiment)
        latest = self.store.latest_fit(experiment_id)
        if latest is None or latest[0].recommendation is None:
            raise Conflict(f"experiment {experiment_id} has no fit yet: POST .../fit first")
        fit = latest[0]
        assert fit.recommendation is not None
        return schemas.Recommendation.model_validate(
            {**fit.recommendation, "fit_id": fit.id, "model": fit.model, "n_runs": fit.n_runs}
        )

    def online_recommendation(self, experiment: ExperimentRecord) -> schemas.Recommendation:
        """The weights to reuse for a fresh run, from the latest completed training run."""
        completed = self.store.list_runs(experiment.id, status="completed", limit=1000)
        runs = completed.items
        while completed.next_cursor is not None:
            completed = self.store.list_runs(
                experiment.id, status="completed", limit=1000, cursor=completed.next_cursor
            )
            runs += completed.items
        if not runs:
            raise Conflict(f"experiment {experiment.id} has no completed training run yet")
        latest = max(runs, key=lambda r: r.updated_at)
        mixer, _ = self._online_mixer(experiment)
        space = space_of(experiment)
        state = self.store.online_state(latest.id).state
        return schemas.Recommendation(
            weights=space.to_dict(mixer.recommend(space, state)), run_id=latest.id
        )


def _features(
    config: MethodConfig,
    space: DomainSpace,
    weights: np.ndarray,
    params: Sequence[Mapping[str, Any]],
    *,
    loc: tuple[str | int, ...],
) -> tuple[np.ndarray, list[str]]:
    """What the regressor sees of each run, and the features' names: the weights alone, or for
    ``quadmix`` the weights and the encoded sampling parameters (``mixers.quadmix``)."""
    if not isinstance(config, QuadMixConfig):
        return weights, list(space.names)
    parsed = [
        QuadMixParams.from_params(p, space.names, config.quality_scores, loc=(*loc, i, "params"))
        for i, p in enumerate(params)
    ]
    return (
        quadmix.joint_features(space, weights, parsed),
        quadmix.joint_feature_names(space, config.quality_scores),
    )


def _recommend_quadmix(
    space: DomainSpace,
    config: QuadMixConfig,
    result: fitting.FitResult,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """QuaDMix's search over weights and sampling parameters; no baseline (the paper has no
    neutral parameter set to compare with), no alternatives."""
    started = time.perf_counter()
    joint = quadmix.recommend_joint(
        space,
        result.estimator.predict,
        rng,
        score_names=config.quality_scores,
        candidates=QUADMIX_CANDIDATES,
        direction=result.direction,
        ranges=config.param_ranges(),
    )
    features = quadmix.joint_features(space, joint.weights[None, :], [joint.params])
    value, low, high = fitting.predict(result, features)
    return {
        "weights": space.to_dict(joint.weights),
        "params": joint.params.to_params(),
        "predicted": {"value": float(value[0]), "low": float(low[0]), "high": float(high[0])},
        "baseline": None,
        "p_better_than_baseline": None,
        "alternatives": [],
        "model": result.model,
        "n_runs": result.n_runs,
        "search": {
            "candidates": joint.candidates,
            "top_k": joint.top_k,
            "seconds": round(time.perf_counter() - started, 4),
            "trust_region": False,
        },
    }


def _check_domains(space: DomainSpace, body: schemas.Feedback, method: str) -> None:
    known = set(space.names)
    if method == "aioli":
        # Aioli estimates how each domain's held-out loss moves: it needs every one of them.
        missing = [name for name in space.names if name not in body.eval_losses]
        if missing:
            raise InvalidInput.at(
                ("body", "eval_losses"),
                f"aioli needs eval_losses for every domain; missing: {', '.join(missing)}",
            )
    errors = [
        ErrorItem(("body", field, name), f"unknown domain {name!r}")
        for field, values in (
            ("train_losses", body.train_losses),
            ("eval_losses", body.eval_losses),
            ("tokens", body.tokens),
        )
        for name in values
        if name not in known
    ]
    if errors:
        raise InvalidInput("feedback names domains the experiment does not have", errors)


def _methods_of(mode: str) -> list[type[Mixer]]:
    from mixers import methods

    return [m for m in methods() if m.mode == mode]


def _csv_rows(experiment: ExperimentRecord, runs: Sequence[RunRecord]) -> Iterator[str]:
    domains = [d["name"] for d in experiment.domains]
    metric_names = sorted({name for run in runs for name in run.metrics})
    tag_keys = sorted({key for run in runs for key in run.tags})
    has_params = any(run.params for run in runs)
    header = [
        "run_id",
        "status",
        "excluded",
        "attempt",
        "external_id",
        "created_at",
        *(f"weight/{d}" for d in domains),
        *(f"metric/{m}" for m in metric_names),
        *(f"tag/{k}" for k in tag_keys),
        *(["params"] if has_params else []),
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(header)
    yield flush()
    for run in runs:
        writer.writerow(
            [
                run.id,
                run.status,
                str(run.excluded).lower(),
                run.attempt,
                run.external_id or "",
                run.created_at.isoformat(),
                *(repr(float(run.weights[d])) for d in domains),
                *(
                    "" if m not in run.metrics else repr(float(run.metrics[m]))
                    for m in metric_names
                ),
                *(run.tags.get(k, "") for k in tag_keys),
                *([json.dumps(run.params, sort_keys=True)] if has_params else []),
            ]
        )
        yield flush()
