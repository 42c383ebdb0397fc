"""The run queue: leases, heartbeats, metric points, completion, failure, exclusion."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from mixopt import schemas
from service.api.body import json_body, openapi_body
from service.api.deps import AuthenticatedRoute, OpsDep, ReadDep, StoreDep, WriteDep
from service.convert import point_out, run_out
from service.problems import PROBLEM_RESPONSES

router = APIRouter(
    prefix="/runs", tags=["runs"], responses=PROBLEM_RESPONSES, route_class=AuthenticatedRoute
)


@router.get("/{run_id}", dependencies=[ReadDep])
def get_run(run_id: str, store: StoreDep) -> schemas.Run:
    return run_out(store.get_run(run_id))


@router.post("/{run_id}/heartbeat", dependencies=[WriteDep])
def heartbeat(run_id: str, body: schemas.HeartbeatRequest, store: StoreDep) -> schemas.Run:
    return run_out(store.heartbeat(run_id, body.worker, body.lease_seconds))


@router.post(
    "/{run_id}/metrics",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[WriteDep],
    response_model=schemas.MetricsAccepted,
    openapi_extra=openapi_body(schemas.MetricsBatch),
)
async def append_metrics(run_id: str, request: Request, store: StoreDep) -> Response:
    # The hot path of ingestion: the body is validated from its bytes (see service.api.body),
    # only the store call goes to a thread, and the small answer is encoded directly.
    body = await json_body(request, schemas.MetricsBatch)
    points = [(p.name, p.step, p.value) for p in body.points]
    accepted, new = await run_in_threadpool(store.append_metrics, run_id, points)
    return metrics_accepted(accepted, new)


def metrics_accepted(accepted: int, new: int) -> Response:
    """The 202 answer of an append (also sent by ``service.api.hot_paths``)."""
    return Response(
        schemas.MetricsAccepted(accepted=accepted, new=new).model_dump_json(),
        status_code=status.HTTP_202_ACCEPTED,
        media_type="application/json",
    )


@router.get("/{run_id}/metrics", dependencies=[ReadDep])
def list_metrics(
    run_id: str,
    store: StoreDep,
    name: Annotated[str | None, Query(pattern=schemas.NAME_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> schemas.Page[schemas.StoredPoint]:
    page = store.list_metrics(run_id, name=name, limit=limit, cursor=cursor)
    return schemas.Page(items=[point_out(p) for p in page.items], next_cursor=page.next_cursor)


@router.post("/{run_id}/complete", dependencies=[WriteDep])
def complete(run_id: str, body: schemas.CompleteRequest, ops: OpsDep) -> schemas.Run:
    """Offline runs must bring every metric of the objective (422 names the missing ones)."""
    return run_out(ops.complete(run_id, body))


@router.post("/{run_id}/fail", dependencies=[WriteDep])
def fail(run_id: str, body: schemas.FailRequest, store: StoreDep) -> schemas.Run:
    return run_out(store.fail(run_id, body.reason, body.worker))


@router.post("/{run_id}/release", dependencies=[WriteDep])
def release(run_id: str, body: schemas.ReleaseRequest, store: StoreDep) -> schemas.Run:
    return run_out(store.release(run_id, body.worker))


@router.post("/{run_id}/retry", dependencies=[WriteDep])
def retry(run_id: str, store: StoreDep) -> schemas.Run:
    """Put a failed offline run back in the queue with a fresh attempt budget (e.g. once the
    training command is fixed); 409 for a run in any other status."""
    return run_out(store.retry(run_id))


@router.post("/{run_id}/exclude", dependencies=[WriteDep])
def exclude(run_id: str, body: schemas.ExcludeRequest, store: StoreDep) -> schemas.Run:
    return run_out(store.exclude(run_id, body.excluded, body.reason))
