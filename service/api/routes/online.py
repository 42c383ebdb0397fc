"""Online training runs: weights polls (ETag), history, feedback and resume."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from starlette.concurrency import run_in_threadpool

from mixopt import schemas
from service.api.deps import AuthenticatedRoute, OpsDep, ReadDep, StoreDep, WriteDep
from service.convert import weights_out
from service.problems import PROBLEM_RESPONSES
from service.store.base import WeightsRecord

router = APIRouter(
    prefix="/runs", tags=["online"], responses=PROBLEM_RESPONSES, route_class=AuthenticatedRoute
)


def _etag(version: int) -> str:
    return f'"{version}"'


def newest_known(if_none_match: str | None) -> int:
    """The highest version named in ``If-None-Match`` (0 if none): what the client has seen."""
    newest = 0
    for tag in (if_none_match or "").split(","):
        tag = tag.strip().removeprefix("W/").strip('"')
        if tag.isdigit():
            newest = max(newest, int(tag))
    return newest


@router.get(
    "/{run_id}/weights",
    dependencies=[ReadDep],
    response_model=schemas.Weights,
    responses={304: {"description": "If-None-Match names the current version"}},
)
async def get_weights(
    run_id: str,
    store: StoreDep,
    at_step: Annotated[int | None, Query(ge=0, le=schemas.MAX_STEP)] = None,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The current weights: from the store's cache on the event loop when it has them, else an
    indexed read in a thread (no mixer maths on a poll either way)."""
    record = store.cached_weights(run_id) if at_step is None else None
    if record is None or record.version < newest_known(if_none_match):
        # A client never goes back to an older version than it has seen, even if this replica
        # has not yet heard of the newer one.
        record = await run_in_threadpool(store.get_weights, run_id, at_step)
    return weights_answer(record, if_none_match)


def weights_answer(record: WeightsRecord, if_none_match: str | None) -> Response:
    """A weights poll's answer: 304 if ``If-None-Match`` names the version, else the weights
    (also sent by ``service.api.hot_paths``)."""
    etag = _etag(record.version)
    if if_none_match is not None and etag in {tag.strip() for tag in if_none_match.split(",")}:
        return Response(status_code=304, headers={"ETag": etag})
    # Encoded here, as FastAPI would (JSON, by alias), instead of returned for FastAPI to
    # validate against the response model again first: the poll is the hot path.
    return Response(
        weights_out(record).model_dump_json(by_alias=True),
        media_type="application/json",
        headers={"ETag": etag},
    )


@router.get("/{run_id}/weights/history", dependencies=[ReadDep])
def weights_history(
    run_id: str,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> schemas.Page[schemas.WeightsVersion]:
    page = store.weights_history(run_id, limit=limit, cursor=cursor)
    items = [
        schemas.WeightsVersion(
            **weights_out(r).model_dump(), created_at=r.created_at, superseded=r.superseded
        )
        for r in page.items
    ]
    return schemas.Page(items=items, next_cursor=page.next_cursor)


@router.post("/{run_id}/feedback", dependencies=[WriteDep])
def feedback(
    run_id: str, body: schemas.Feedback, ops: OpsDep, response: Response
) -> schemas.Weights:
    record = ops.feedback(run_id, body)
    response.headers["ETag"] = _etag(record.version)
    return weights_out(record)


@router.post("/{run_id}/resume", dependencies=[WriteDep])
def resume(
    run_id: str, body: schemas.ResumeRequest, store: StoreDep, response: Response
) -> schemas.Weights:
    record = store.resume(run_id, body.step)
    response.headers["ETag"] = _etag(record.version)
    return weights_out(record)
