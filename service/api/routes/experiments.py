"""Experiments, methods, proposals and imports."""

from __future__ import annotations

import inspect
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from mixers import methods
from mixers.regressors import make_regressor, regressor_names
from mixopt import schemas
from mixopt.errors import InvalidInput
from service import transfer
from service.api.deps import AdminDep, AuthenticatedRoute, OpsDep, ReadDep, StoreDep, WriteDep
from service.convert import experiment_out, fit_out, run_out
from service.problems import PROBLEM_RESPONSES
from service.store import ExperimentRecord, Store

router = APIRouter(
    tags=["experiments"], responses=PROBLEM_RESPONSES, route_class=AuthenticatedRoute
)

Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]
Cursor = Annotated[str | None, Query(description="next_cursor of the previous page")]


def _model_info(name: str) -> schemas.ModelInfo:
    estimator = make_regressor(name, 0)
    doc = inspect.getdoc(type(estimator)) or ""
    defaults = {
        key: value
        for key, value in estimator.get_params(deep=False).items()
        if isinstance(value, str | int | float | bool | None) and key != "random_state"
    }
    return schemas.ModelInfo(name=name, description=doc.split("\n\n")[0], defaults=defaults)


@router.get("/methods", dependencies=[ReadDep])
def list_methods() -> schemas.MethodList:
    """The experiment methods (with their config's JSON Schema) and the fit's models."""
    auto = schemas.ModelInfo(
        name="auto",
        description="Cross-validates every regressor below and fits the one with the best "
        "K-fold Spearman; the fit reports each one's score.",
    )
    return schemas.MethodList(
        items=[
            schemas.MethodInfo(
                name=m.name,
                mode=m.mode,
                description=m.description,
                config_schema=m.Config.model_json_schema(),
            )
            for m in methods()
        ],
        models=[auto, *(_model_info(name) for name in regressor_names())],
    )


@router.post("/experiments", status_code=status.HTTP_201_CREATED, dependencies=[AdminDep])
def create_experiment(body: schemas.ExperimentCreate, ops: OpsDep) -> schemas.Experiment:
    return experiment_out(ops.create_experiment(body))


@router.get("/experiments", dependencies=[ReadDep])
def list_experiments(
    store: StoreDep,
    status: schemas.ExperimentStatus | None = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> schemas.Page[schemas.Experiment]:
    page = store.list_experiments(status=status, limit=limit, cursor=cursor)
    return schemas.Page(items=[experiment_out(e) for e in page.items], next_cursor=page.next_cursor)


@router.get("/experiments/{experiment_id}", dependencies=[ReadDep])
def get_experiment(experiment_id: str, store: StoreDep) -> schemas.Experiment:
    return experiment_out(store.get_experiment(experiment_id))


@router.patch("/experiments/{experiment_id}", dependencies=[AdminDep])
def update_experiment(
    experiment_id: str, body: schemas.ExperimentUpdate, ops: OpsDep
) -> schemas.Experiment:
    """Rename the experiment or change its objective (checked as at create). Fits made on
    the old objective stay listed; recommend and predict answer 409 until the next fit."""
    return experiment_out(ops.update_experiment(experiment_id, body))


@router.post("/experiments/{experiment_id}/archive", dependencies=[AdminDep])
def archive_experiment(experiment_id: str, store: StoreDep) -> schemas.Experiment:
    return experiment_out(store.archive_experiment(experiment_id))


@router.post(
    "/experiments/{experiment_id}/proposals",
    status_code=status.HTTP_201_CREATED,
    dependencies=[WriteDep],
)
def propose(experiment_id: str, body: schemas.ProposalRequest, ops: OpsDep) -> schemas.RunList:
    return schemas.RunList(items=[run_out(r) for r in ops.propose(experiment_id, body)])


# The body differs by the experiment's mode, so it is validated against the mode's schema in
# Operations.add_run (errors then name the field, not a union member) and documented as oneOf.
_RUN_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/RunImport"},
                        {"$ref": "#/components/schemas/OnlineRunCreate"},
                    ]
                }
            }
        },
    }
}


@router.post(
    "/experiments/{experiment_id}/runs",
    status_code=status.HTTP_201_CREATED,
    dependencies=[WriteDep],
    openapi_extra=_RUN_BODY_DOC,
    responses={
        200: {
            "model": schemas.Run,
            "description": "the run already stored under this external_id or request_id",
        }
    },
)
def add_run(
    experiment_id: str,
    body: Annotated[dict[str, Any], Body(include_in_schema=False)],
    ops: OpsDep,
    response: Response,
) -> schemas.Run:
    """Offline: import a run someone else chose or trained (RunImport). Online: start a
    training run (OnlineRunCreate)."""
    record, created = ops.add_run(experiment_id, body)
    if not created:
        response.status_code = status.HTTP_200_OK
    return run_out(record)


@router.post(
    "/experiments/{experiment_id}/runs/batch",
    status_code=status.HTTP_201_CREATED,
    dependencies=[WriteDep],
)
def add_runs_batch(
    experiment_id: str, body: schemas.RunBatch, ops: OpsDep
) -> schemas.RunBatchResult:
    """Offline: import up to 1,000 runs at once, all or nothing, each idempotent on its
    external_id as in the single import (``new`` counts the runs this call stored). A row that
    is invalid (422) or conflicts with a stored run (409) stores nothing of the batch."""
    records, new = ops.add_runs_batch(experiment_id, body)
    return schemas.RunBatchResult(items=[run_out(r) for r in records], new=new)


@router.get("/experiments/{experiment_id}/runs", dependencies=[ReadDep])
def list_runs(
    experiment_id: str,
    store: StoreDep,
    status: schemas.RunStatus | None = None,
    excluded: bool | None = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> schemas.Page[schemas.Run]:
    page = store.list_runs(
        experiment_id, status=status, excluded=excluded, limit=limit, cursor=cursor
    )
    return schemas.Page(items=[run_out(r) for r in page.items], next_cursor=page.next_cursor)


@router.get(
    "/experiments/{experiment_id}/runs.csv",
    dependencies=[ReadDep],
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "every run, one per row"}},
)
def export_runs(experiment_id: str, ops: OpsDep) -> StreamingResponse:
    rows = ops.runs_csv(experiment_id)
    return StreamingResponse(
        rows,
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="experiment-{experiment_id}.csv"'},
    )


@router.post(
    "/experiments/{experiment_id}/claim",
    dependencies=[WriteDep],
    response_model=schemas.Run,
    responses={204: {"description": "no pending run"}},
)
def claim(
    experiment_id: str, body: schemas.ClaimRequest, store: StoreDep
) -> schemas.Run | Response:
    record = store.claim(experiment_id, body.worker, body.lease_seconds)
    if record is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return run_out(record)


@router.get("/experiments/{experiment_id}/recommendation", dependencies=[ReadDep])
def recommendation(experiment_id: str, ops: OpsDep) -> schemas.Recommendation:
    """Offline: the latest fit's stored recommendation. Online: weights for a fresh run."""
    return ops.recommendation(experiment_id)


@router.post(
    "/experiments/{experiment_id}/fit",
    dependencies=[WriteDep],
    responses={202: {"model": schemas.FitReport, "description": "wait=false: the fit, running"}},
)
async def fit(
    experiment_id: str, ops: OpsDep, response: Response, body: schemas.FitRequest | None = None
) -> schemas.FitReport:
    """Fit on completed, non-excluded runs; cross-validate; search and store the recommendation.

    The fit runs in a worker process (``fit_workers``), awaited here: it holds no thread and
    slows no other request. ``wait: false`` answers 202 with the running fit at once.
    """
    report, done = await ops.fit(experiment_id, body or schemas.FitRequest())
    if not done:
        response.status_code = status.HTTP_202_ACCEPTED
    return report


@router.post("/experiments/{experiment_id}/backtest", dependencies=[WriteDep])
def backtest(
    experiment_id: str, ops: OpsDep, body: schemas.BacktestRequest | None = None
) -> schemas.BacktestReport:
    """Replay the usable runs: what each regressor and design would have recommended with 32,
    64, ... runs. Stores nothing. Minutes for a large swarm: in the thread pool, like a fit."""
    return ops.backtest(experiment_id, body or schemas.BacktestRequest())


@router.get("/experiments/{experiment_id}/fits", dependencies=[ReadDep])
def list_fits(
    experiment_id: str, store: StoreDep, ops: OpsDep, limit: Limit = 100, cursor: Cursor = None
) -> schemas.Page[schemas.FitReport]:
    """Newest first, running and failed fits too (see ``status``)."""
    page = store.list_fits(experiment_id, limit=limit, cursor=cursor)
    return schemas.Page(
        items=[fit_out(f, stage=ops.fits.stage(f.id)) for f in page.items],
        next_cursor=page.next_cursor,
    )


@router.get("/fits/{fit_id}", dependencies=[ReadDep])
def get_fit(fit_id: str, store: StoreDep, ops: OpsDep) -> schemas.FitReport:
    """A fit; poll it while ``status`` is ``running`` (``progress`` says how far it is)."""
    return fit_out(store.get_fit(fit_id), stage=ops.fits.stage(fit_id))


@router.post("/experiments/{experiment_id}/predict", dependencies=[ReadDep])
def predict(
    experiment_id: str, body: schemas.PredictRequest, ops: OpsDep
) -> schemas.PredictionList:
    return schemas.PredictionList(items=ops.predict(experiment_id, body))


@router.get(
    "/experiments/{experiment_id}/export",
    dependencies=[AdminDep],
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ExperimentArchive"}}
            },
            "description": "the experiment archive (runs, metric points, fits, online history)",
        }
    },
)
def export_experiment(experiment_id: str, store: StoreDep) -> StreamingResponse:
    """Everything the experiment holds, as an archive ``POST /experiments/import`` (of this
    server or another) reads back; read in one snapshot."""
    archive = transfer.export_archive(store, experiment_id)
    return StreamingResponse(
        transfer.archive_chunks(archive),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="experiment-{experiment_id}.json"'},
    )


_ARCHIVE_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ExperimentArchive"}},
            # The archive gzip'd (what the client sends); any other type of body is 415.
            "application/gzip": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post(
    "/experiments/import",
    status_code=status.HTTP_201_CREATED,
    dependencies=[AdminDep],
    openapi_extra=_ARCHIVE_BODY_DOC,
    responses={
        200: {"model": schemas.Experiment, "description": "this archive was imported before"}
    },
)
async def import_experiment(
    request: Request,
    store: StoreDep,
    response: Response,
    name: Annotated[
        str | None,
        Query(pattern=schemas.NAME_PATTERN, description="a name instead of the archive's"),
    ] = None,
) -> schemas.Experiment:
    """Write an archive (``GET .../export``) as a new experiment with new ids, all or nothing.
    The same archive again: 200 with that experiment (409 if its content was changed). Capped
    at ``max_import_bytes`` (64 MiB by default), not the usual body limit; a gzip'd archive is
    read too."""
    data = await request.body()
    limit: int = request.app.state.settings.max_import_bytes
    record, created = await run_in_threadpool(_import, store, data, name, limit)
    if not created:
        response.status_code = status.HTTP_200_OK
    return experiment_out(record)


def _import(
    store: Store, data: bytes, name: str | None, max_bytes: int
) -> tuple[ExperimentRecord, bool]:
    try:
        archive = transfer.read_archive(data, max_bytes=max_bytes)
        return transfer.import_archive(store, archive, name=name)
    except InvalidInput as exc:
        raise exc.prefixed("body") from None
