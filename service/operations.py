"""Application logic between the routes and the store: where the mixers meet the stored runs.

Routes parse and serialise; the store persists; this module validates what needs the experiment's
domains (mixtures, configs) and calls the mixers through their interface. It names no method:
a new one is a module in ``mixers`` and its registration.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from mixers import DomainSpace, ExperimentSetup, Observation, RunSummary, methods
from mixers.backtest import BacktestPlan
from mixers.fitting import Fit, check_model, usable_runs
from mixers.offline.base import OfflineMixer
from mixers.online import Feedback, OnlineMixer
from mixers.persistence import UnreadableFit, load_fit
from mixers.registry import get_method, offline_method, online_method
from mixopt import schemas
from mixopt.errors import Conflict, ErrorItem, Gone, InvalidInput
from mixopt.runs_csv import write_runs
from service.convert import backtest_out, fit_out
from service.fit_runner import FitJob, FitRunner
from service.store import ExperimentRecord, NewExperiment, NewRun, RunRecord, Store
from service.store.base import FitRecord, NewOnlineRun, NewVersion, StaleVersion, WeightsRecord

__all__ = ["Operations", "objective_value", "space_of"]

log = logging.getLogger("mixopt.service")

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


def _offline_mixer(experiment: ExperimentRecord) -> OfflineMixer[Any]:
    return offline_method(experiment.method).from_config(experiment.config)


def _online_mixer(experiment: ExperimentRecord) -> OnlineMixer[Any]:
    return online_method(experiment.method).from_config(experiment.config)


def _checked_import(
    space: DomainSpace, mixer: OfflineMixer[Any], body: schemas.RunImport, *loc: str | int
) -> NewRun:
    """An imported run as the store takes it, once its weights and params fit the experiment;
    ``InvalidInput`` located under ``loc`` (the body, or the body's row) otherwise."""
    space.validate_weights(body.weights, loc=(*loc, "weights"))
    try:
        mixer.check_params(space, body.params)
    except InvalidInput as exc:
        raise exc.prefixed(*loc) from None
    return NewRun(
        weights=body.weights,
        params=body.params,
        tags=body.tags,
        metrics=body.metrics,
        status=body.resolved_status,
        external_id=body.external_id,
    )


def _check_current(experiment: ExperimentRecord, fit: FitRecord) -> None:
    """``Conflict`` for a fit started before the objective was last changed: its model and
    recommendation are of the old objective, so it is kept as history but not used."""
    changed = experiment.objective_changed_at
    started = fit.started_at or fit.fitted_at
    if changed is not None and started < changed:
        raise Conflict(
            f"fit {fit.id} was made on the objective the experiment had before "
            f"{changed.isoformat()}; POST /experiments/{experiment.id}/fit to fit the current one"
        )


class Operations:
    def __init__(self, store: Store, fits: FitRunner | None = None) -> None:
        self.store = store
        # Without a runner of the app's (a script's Operations), fits run in this process.
        self.fits = fits or FitRunner(store, workers=0)
        self._fits: dict[str, Fit] = {}

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
            known = sorted(m.name for m in methods() if m.mode == body.mode)
            raise InvalidInput.at(
                ("method",),
                f"unknown {body.mode} method {body.method!r}; known: {', '.join(known) or 'none'}",
            ) from None
        mixer = cls.from_config(body.config)
        if body.objective is not None:
            objective = body.objective.model_dump()
        elif body.mode == "online":
            objective = dict(ONLINE_DEFAULT_OBJECTIVE)
        else:
            raise InvalidInput.at(
                ("objective",), "offline experiments need an objective: the metrics to optimise"
            )
        setup = ExperimentSetup(direction=objective["direction"], find_run=self._run_summary)
        config = mixer.complete_config(setup)
        if config.seed is None:
            # Stored, so that every later proposal is reproducible from the experiment alone.
            config = config.model_copy(update={"seed": secrets.randbelow(2**31)})
        space = DomainSpace.from_domains(
            [d.model_dump() for d in body.domains],
            train_tokens=config.train_tokens,
            max_epochs=config.max_epochs,
        )
        cls(config).check_space(space)
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

    def update_experiment(
        self, experiment_id: str, body: schemas.ExperimentUpdate
    ) -> ExperimentRecord:
        """``PATCH /experiments/{id}``: a new name and/or objective. The objective is checked
        as at create (its direction against the method); fits made on the old one stay in the
        history but no longer recommend or predict (``_current_fit``)."""
        experiment = self.store.get_experiment(experiment_id, counts=False)
        objective = None
        if body.objective is not None:
            objective = body.objective.model_dump()
            mixer = (
                _offline_mixer(experiment)
                if experiment.mode == "offline"
                else _online_mixer(experiment)
            )
            setup = ExperimentSetup(direction=objective["direction"], find_run=self._run_summary)
            try:
                mixer.complete_config(setup)
            except InvalidInput as exc:
                # The stored config was completed for the old objective (e.g. its direction).
                turned = objective["direction"] != experiment.objective["direction"]
                loc = ("body", "objective", *(("direction",) if turned else ()))
                raise InvalidInput.at(loc, exc.detail) from None
        return self.store.update_experiment(experiment_id, name=body.name, objective=objective)

    def _run_summary(self, run_id: str) -> RunSummary:
        """What a method may read of another run (e.g. a reference run named in its config)."""
        run = self.store.get_run(run_id)
        losses = (self.store.last_feedback(run_id) or {}).get("eval_losses") or {}
        return RunSummary(status=run.status, eval_losses=dict(losses))

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
        mixer = _offline_mixer(experiment)
        space = space_of(experiment)
        history = self.history(experiment, space)
        # Seeded by the experiment and the number of runs so far: the same sequence of calls
        # gives the same designs, and successive calls give new ones.
        rng = np.random.default_rng([mixer.config.seed or 0, len(history)])
        proposals = mixer.propose(space, history, request.count, rng)
        new_runs = [
            NewRun(weights=space.to_dict(p.weights), params=dict(p.params)) for p in proposals
        ]
        return self.store.add_runs(experiment_id, new_runs, request.request_id)

    def history(self, experiment: ExperimentRecord, space: DomainSpace) -> list[Observation]:
        """Every run with the mixers' view of it (weights as an array, objective value, and
        the values of the objective's metrics, which a fit may model one by one)."""
        terms = experiment.objective["metrics"]
        return [
            Observation(
                weights=space.to_array(run.weights),
                params=run.params,
                objective=objective_value(experiment.objective, run.metrics)
                if run.status == "completed"
                else None,
                status=run.status,
                excluded=run.excluded,
                run_id=run.id,
                metrics={name: run.metrics[name] for name in terms if name in run.metrics},
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

    def _import_run(
        self, experiment: ExperimentRecord, body: schemas.RunImport
    ) -> tuple[RunRecord, bool]:
        new_run = _checked_import(space_of(experiment), _offline_mixer(experiment), body, "body")
        return self.store.import_run(experiment.id, new_run)

    def add_runs_batch(
        self, experiment_id: str, body: schemas.RunBatch
    ) -> tuple[list[RunRecord], int]:
        """``POST /experiments/{id}/runs/batch``: every run checked as the single import checks
        it (the errors of all rows at once), then stored all or nothing. Answers the runs in
        the order of the body and how many were new."""
        experiment = self._offline(experiment_id)
        if experiment.status != "active":
            raise Gone(f"experiment {experiment_id} is archived and accepts no new runs")
        space, mixer = space_of(experiment), _offline_mixer(experiment)
        new_runs: list[NewRun] = []
        errors: list[ErrorItem] = []
        first: dict[str, int] = {}
        for i, run in enumerate(body.runs):
            try:
                new_runs.append(_checked_import(space, mixer, run, "body", "runs", i))
            except InvalidInput as exc:
                errors += exc.errors or [ErrorItem(("body", "runs", i), exc.detail)]
            if run.external_id is None:
                continue
            j = first.setdefault(run.external_id, i)
            other = body.runs[j]
            if (other.weights, other.metrics) != (run.weights, run.metrics):
                msg = f"external_id {run.external_id!r} is run {j}'s, with other weights or metrics"
                errors.append(ErrorItem(("body", "runs", i, "external_id"), msg))
        if errors:
            bad = len({e.loc[:3] for e in errors})
            where = ".".join(str(part) for part in errors[0].loc)
            raise InvalidInput(
                f"{bad} of {len(body.runs)} runs are invalid, nothing was imported "
                f"(first: {where}: {errors[0].msg})",
                errors,
            )
        answers = self.store.import_runs(experiment.id, new_runs)
        return [record for record, _ in answers], sum(created for _, created in answers)

    def complete(self, run_id: str, body: schemas.CompleteRequest) -> RunRecord:
        """``POST /runs/{id}/complete``. An offline run must bring every metric of the
        objective (422 otherwise): a run completed without them could never be fitted, so the
        worker fails the attempt instead. Online runs report through feedback; not checked."""
        run = self.store.get_run(run_id)
        # A repeated completion, a failed run and a lost lease are the store's to answer.
        theirs = body.worker is not None and run.worker != body.worker
        if run.status in ("pending", "running") and not theirs:
            experiment = self.store.get_experiment(run.experiment_id, counts=False)
            missing = sorted(set(experiment.objective["metrics"]) - set(body.metrics))
            if experiment.mode == "offline" and missing:
                present = ", ".join(sorted(body.metrics)) or "none"
                raise InvalidInput.at(
                    ("body", "metrics"),
                    f"missing the objective's metrics {', '.join(missing)} "
                    f"(the metrics sent: {present})",
                )
        return self.store.complete(run_id, body.metrics, body.worker)

    def runs_csv(self, experiment_id: str) -> Iterator[str]:
        """Every run as CSV rows: ``weight/<domain>``, ``metric/<name>``, ``tag/<key>`` columns.

        ``mixopt runs import`` reads this format back. The prefixes cannot clash with names:
        a column's kind is what stands before its first slash.
        """
        experiment = self.store.get_experiment(experiment_id, counts=False)
        runs = list(self.store.iter_runs(experiment_id))
        return write_runs([d["name"] for d in experiment.domains], runs)

    # --- fits ---

    async def fit(
        self, experiment_id: str, body: schemas.FitRequest
    ) -> tuple[schemas.FitReport, bool]:
        """Start a fit (``FitRunner``: cross-validate, refit, search the recommendation; all of
        it stored in one fit); the report and whether it is done.

        With ``body.wait`` it is awaited (no thread is held) and a fit that fails raises its
        problem; without, the running fit is answered at once. What can be checked before
        starting is checked first either way: a 202 is only for fits expected to run.
        """
        record, job = await run_in_threadpool(self._start_fit, experiment_id, body)
        task = self.fits.launch(record, job)
        if not body.wait:
            return fit_out(record, stage=self.fits.stage(record.id)), False
        try:
            # Shielded: a client that goes away does not stop the fit (it is stored anyway).
            done = await asyncio.shield(task)
        except InvalidInput as exc:
            raise exc.prefixed("body") from None
        return fit_out(done), True

    def _start_fit(self, experiment_id: str, body: schemas.FitRequest) -> tuple[FitRecord, FitJob]:
        try:  # the body before the state: an unknown model is 422 however many runs there are
            check_model(body.model)
        except InvalidInput as exc:
            raise exc.prefixed("body") from None
        experiment = self._offline(experiment_id)
        mixer = _offline_mixer(experiment)
        space = space_of(experiment)
        history = tuple(self.history(experiment, space))
        try:  # Conflict with too few, before the fit is stored
            usable_runs(history, space.k)
        except Conflict as exc:
            raise Conflict(f"{exc.detail}{self._missing_metrics(experiment)}") from None
        record = self.store.start_fit(experiment.id, body.model, self.fits.instance)
        job = FitJob(
            fit_id=record.id,
            mixer=mixer,
            space=space,
            history=history,
            model=body.model,
            direction=experiment.objective["direction"],
            metric_weights=dict(experiment.objective["metrics"]),
        )
        return record, job

    def _missing_metrics(self, experiment: ExperimentRecord) -> str:
        """Why completed runs are not usable, when it is the objective's names: the metrics
        none of them has, and the names they do have ("" when every metric is found)."""
        present: set[str] = set()
        for run in self.store.iter_runs(experiment.id):
            if run.status == "completed" and not run.excluded:
                present.update(run.metrics)
        missing = sorted(set(experiment.objective["metrics"]) - present)
        if not missing:
            return ""
        names = ", ".join(sorted(present)[:20]) + (" ..." if len(present) > 20 else "")
        return (
            f"; no completed run has the objective's metric {', '.join(missing)} "
            f"(their metrics: {names or 'none'}; PATCH the objective to rename it)"
        )

    def backtest(self, experiment_id: str, body: schemas.BacktestRequest) -> schemas.BacktestReport:
        """Replay the experiment's usable runs (``mixers.backtest``); CPU-bound, stores nothing."""
        experiment = self._offline(experiment_id)
        mixer = _offline_mixer(experiment)
        space = space_of(experiment)
        plan = BacktestPlan(
            models=body.models,
            sizes=body.sizes,
            designs=body.designs,
            reference_model=body.reference_model,
            max_fits=MAX_BACKTEST_FITS,
        )
        try:
            result = mixer.backtest(
                space,
                self.history(experiment, space),
                plan,
                direction=experiment.objective["direction"],
                metric_weights=experiment.objective["metrics"],
            )
        except InvalidInput as exc:
            raise exc.prefixed("body") from None
        return backtest_out(result, experiment.id)

    def predict(self, experiment_id: str, body: schemas.PredictRequest) -> list[schemas.Predicted]:
        experiment = self._offline(experiment_id)
        mixer = _offline_mixer(experiment)
        space = space_of(experiment)
        weights = np.array(
            [
                space.validate_weights(m.weights, loc=("body", "mixtures", i, "weights"))
                for i, m in enumerate(body.mixtures)
            ]
        )
        try:
            features = mixer.features(space, weights, [m.params for m in body.mixtures])
        except InvalidInput as exc:
            raise exc.prefixed("body", "mixtures") from None
        predictions = mixer.predict(self._latest_fit(experiment), features)
        return [schemas.Predicted(value=p.value, low=p.low, high=p.high) for p in predictions]

    def _latest_fit(self, experiment: ExperimentRecord) -> Fit:
        latest = self.store.latest_fit(experiment.id)
        if latest is None:
            raise Conflict(f"experiment {experiment.id} has no fit yet: POST .../fit first")
        record, stored = latest
        _check_current(experiment, record)
        if stored is None:
            raise Conflict(
                f"fit {record.id} has no stored model: its regressor {record.model!r} has no "
                "to_state(), so it can recommend but not predict"
            )
        cached = self._fits.get(record.id)
        if cached is None:
            try:
                cached = load_fit(stored.data, stored.format)
            except UnreadableFit as exc:
                raise UnreadableFit(f"fit {record.id}: {exc.detail} (POST .../fit)") from None
            self._fits = {record.id: cached}  # the latest fit per process is what is asked
        return cached

    # --- online runs ---

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
        mixer = _online_mixer(experiment)
        space = space_of(experiment)
        state = mixer.init_state(space, mixer.config.seed or 0)
        decision = mixer.decide(space, state)
        return self.store.start_online_run(
            experiment_id,
            NewOnlineRun(body.name, body.total_steps, body.tags, body.request_id),
            NewVersion(
                state, space.to_dict(decision.weights), decision.phase, decision.train_steps
            ),
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
            if body.step < context.current_step:
                # Steps only move forward; going back is what resume is for.
                raise Conflict(
                    f"run {run_id} is at step {context.current_step}: feedback for step "
                    f"{body.step} comes too late (POST .../resume to restart from a checkpoint)"
                )
            space = space_of(experiment)
            mixer = _online_mixer(experiment)
            feedback = Feedback(
                step=body.step,
                train_losses=body.train_losses,
                eval_losses=body.eval_losses,
                tokens=body.tokens,
                version=body.version,
            )
            try:
                mixer.check_feedback(space, feedback)
            except InvalidInput as exc:
                raise exc.prefixed("body") from None
            state = mixer.observe(space, current.state, feedback)
            decision = mixer.decide(space, state)
            try:
                return self.store.apply_feedback(
                    run_id,
                    expected_version=current.version,
                    step=body.step,
                    body=recorded,
                    version=NewVersion(
                        state, space.to_dict(decision.weights), decision.phase, decision.train_steps
                    ),
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
        _check_current(experiment, fit)
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
        mixer = _online_mixer(experiment)
        space = space_of(experiment)
        state = self.store.online_state(latest.id).state
        return schemas.Recommendation(
            weights=space.to_dict(mixer.recommend(space, state)), run_id=latest.id
        )
