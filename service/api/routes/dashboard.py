"""The web dashboard: server-rendered pages over the same store and operations as the API.

Pages (HTML) sign in with a cookie (``service.web.auth``); the few endpoints the pages' script
calls live under ``/ui`` and answer JSON (problem documents on errors, like the API). None of it
is part of the HTTP contract, so it stays out of the OpenAPI document.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

import plotly
from fastapi import APIRouter, Body, Depends, Form, Header, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from mixers.regressors import regressor_names
from mixopt import __version__, schemas
from mixopt.errors import MixoptError, NotFound, Unauthorized
from service.api.deps import OpsDep, StoreDep
from service.auth import SCOPE_RANK, Authenticator, FailureThrottle, Principal
from service.problems import problem_status
from service.web import views
from service.web.auth import (
    CSRF_HEADER,
    LoginRequired,
    check_csrf,
    csrf_token,
    principal_of,
    set_session,
)

__all__ = ["home", "pages", "ui"]

WEB = Path(__file__).resolve().parents[2] / "web"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
STATIC_FILES = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
CACHE_FOREVER = "public, max-age=31536000, immutable"

templates = Jinja2Templates(directory=WEB / "templates")
templates.env.globals.update(version=__version__, plotly_version=plotly.__version__)
templates.env.filters["age"] = lambda moment: views.age(moment, datetime.now(UTC))
templates.env.filters["fmt"] = lambda value, digits=4: (
    "–" if value is None else f"{value:.{digits}f}"
)


class PageRoute(APIRoute):
    """A page: errors become an HTML page with the right status, and a missing or unusable
    session sends the browser to the login page (API and ``/ui`` calls get problem JSON)."""

    def get_route_handler(self) -> Any:
        handler = super().get_route_handler()

        async def page(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/login?next={quote(target)}", status_code=303)
            except MixoptError as exc:
                return _error_page(request, problem_status(exc), exc.title, exc.detail)

        return page


pages = APIRouter(include_in_schema=False, route_class=PageRoute)
# The entry page is in the contract (``GET /``), so it alone is documented.
home = APIRouter(route_class=PageRoute, tags=["dashboard"])
ui = APIRouter(prefix="/ui", include_in_schema=False)


def _error_page(request: Request, status: int, title: str, detail: str) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        "error.html",
        {"status": status, "title": title, "detail": detail, "viewer": None, "csrf": ""},
        status_code=status,
    )


async def viewer(request: Request) -> Principal:
    return await principal_of(request, "read")


Viewer = Annotated[Principal, Depends(viewer)]


def _render(request: Request, name: str, viewer: Principal, **context: Any) -> HTMLResponse:
    auth: Authenticator = request.app.state.auth
    response = templates.TemplateResponse(
        request,
        name,
        {
            "viewer": viewer,
            "can_write": SCOPE_RANK[viewer.scope] >= SCOPE_RANK["write"],
            "auth_enabled": auth.enabled,
            "csrf": csrf_token(request),
            **context,
        },
    )
    csrf_token(request, response)
    return response


def _safe_next(target: str | None) -> str:
    """Only a path on this site (no scheme, host or ``//``): no open redirect."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else "/"


# --- static files ------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _plotly_bytes() -> bytes:
    return PLOTLY_JS.read_bytes()


@pages.get("/static/plotly-{version}.min.js")
def plotly_js(version: str) -> Response:
    """plotly.js from the installed ``plotly`` package: nothing comes from a CDN."""
    if version != plotly.__version__:
        raise NotFound(f"this server has plotly {plotly.__version__}")
    return Response(
        _plotly_bytes(), media_type="text/javascript", headers={"Cache-Control": CACHE_FOREVER}
    )


@pages.get("/static/{name}")
def static(name: str) -> FileResponse:
    if name not in STATIC_FILES:
        raise NotFound(f"no static file {name!r}")
    return FileResponse(
        WEB / "static" / name,
        media_type=STATIC_FILES[name],
        headers={"Cache-Control": "no-cache"},
    )


# --- sign in -----------------------------------------------------------------------------------


@pages.get("/login")
async def login_page(request: Request, next: str | None = None) -> HTMLResponse:
    auth: Authenticator = request.app.state.auth
    if not auth.enabled:
        return RedirectResponse(_safe_next(next), status_code=303)  # type: ignore[return-value]
    response = templates.TemplateResponse(
        request,
        "login.html",
        {"next": _safe_next(next), "csrf": csrf_token(request), "viewer": None, "error": None},
    )
    csrf_token(request, response)
    return response


@pages.post("/login")
async def login(
    request: Request,
    token: Annotated[str, Form()] = "",
    csrf: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    check_csrf(request, csrf)
    auth: Authenticator = request.app.state.auth
    error = None
    if not token.strip():
        error = "enter a token"
    else:
        try:
            await run_in_threadpool(auth.authenticate, f"Bearer {token.strip()}", "read")
        except Unauthorized as exc:
            error = exc.detail
            # Guessing tokens on the login form is slowed like guessing them on the API.
            throttle: FailureThrottle = request.app.state.auth_throttle
            await throttle.refused(request.client.host if request.client else "unknown")
    if error:
        response: Response = templates.TemplateResponse(
            request,
            "login.html",
            {"next": _safe_next(next), "csrf": csrf, "viewer": None, "error": error},
            status_code=401,
        )
        return response
    response = RedirectResponse(_safe_next(next), status_code=303)
    set_session(request, response, token.strip())
    return response


@pages.post("/logout")
async def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    check_csrf(request, csrf)
    response = RedirectResponse("/login", status_code=303)
    set_session(request, response, None)
    return response


# --- pages -------------------------------------------------------------------------------------


@home.get(
    "/",
    response_class=HTMLResponse,
    # Public: without a session the browser is sent to the login page, never a 401.
    openapi_extra={"security": []},
    responses={
        200: {"content": {"text/html": {}}, "description": "the experiments list"},
        303: {"description": "to /login when auth is on and the browser has no session"},
    },
)
def experiments_page(
    request: Request,
    who: Viewer,
    store: StoreDep,
    q: str = "",
    mode: schemas.Mode | None = None,
    runs: schemas.RunStatus | None = None,
    archived: bool = False,
) -> HTMLResponse:
    """The dashboard's entry page: every experiment with its run counts and best objective."""
    wanted = views.ExperimentFilter(q=q, mode=mode, runs=runs, archived=archived)
    return _render(
        request,
        "experiments.html",
        who,
        rows=views.experiment_list(store, wanted),
        filters=wanted,
        statuses=views.RUN_STATUSES,
    )


@pages.get("/experiments/{experiment_id}")
def experiment_page(
    request: Request,
    experiment_id: str,
    who: Viewer,
    store: StoreDep,
    sort: Annotated[str, Query(pattern="^(id|status|objective|updated)$")] = "id",
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "asc",
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
) -> HTMLResponse:
    experiment = store.get_experiment(experiment_id)
    if experiment.mode == "online":
        return _render(
            request, "online_experiment.html", who, **views.online_experiment(store, experiment)
        )
    context = views.offline_experiment(
        store, experiment, sort=sort, descending=order == "desc", page=page
    )
    return _render(
        request,
        "offline_experiment.html",
        who,
        models=["auto", *regressor_names()],
        **context,
    )


@pages.get("/runs/{run_id}")
def run_page(request: Request, run_id: str, who: Viewer, store: StoreDep) -> HTMLResponse:
    run = store.get_run(run_id)
    experiment = store.get_experiment(run.experiment_id, counts=False)
    if experiment.mode == "online":
        return _render(request, "online_run.html", who, **views.online_run(store, experiment, run))
    return _render(request, "run.html", who, **views.run_page(store, experiment, run))


@pages.post("/runs/{run_id}/exclusion")
async def set_exclusion(
    request: Request,
    run_id: str,
    store: StoreDep,
    excluded: Annotated[bool, Form()],
    csrf: Annotated[str, Form()] = "",
    reason: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    await principal_of(request, "write")
    check_csrf(request, csrf)
    await run_in_threadpool(store.exclude, run_id, excluded, reason.strip() or None)
    return RedirectResponse(f"/runs/{quote(run_id)}", status_code=303)


# --- what the pages' script calls --------------------------------------------------------------


async def _ui_principal(request: Request, scope: str, csrf: str | None = None) -> Principal:
    try:
        principal = await principal_of(request, scope)
    except LoginRequired as exc:
        raise Unauthorized(exc.detail) from None
    if request.method != "GET":
        check_csrf(request, csrf)
    return principal


@ui.post("/experiments/{experiment_id}/predict")
async def ui_predict(
    request: Request,
    experiment_id: str,
    ops: OpsDep,
    body: Annotated[schemas.PredictRequest, Body()],
    x_csrf_token: Annotated[str | None, Header(alias=CSRF_HEADER)] = None,
) -> schemas.PredictionList:
    """The what-if panel: the stored fit's prediction and interval for typed mixtures."""
    await _ui_principal(request, "read", x_csrf_token or "")
    items = await run_in_threadpool(ops.predict, experiment_id, body)
    return schemas.PredictionList(items=items)


@ui.post("/experiments/{experiment_id}/fits")
async def ui_fit(
    request: Request,
    experiment_id: str,
    ops: OpsDep,
    body: Annotated[schemas.FitRequest, Body()],
    x_csrf_token: Annotated[str | None, Header(alias=CSRF_HEADER)] = None,
) -> schemas.FitReport:
    """Start a fit from the page; it runs in a fit worker while the page shows progress."""
    await _ui_principal(request, "write", x_csrf_token or "")
    report, _ = await ops.fit(experiment_id, body)
    return report


async def _ui_reader(request: Request) -> Principal:
    return await _ui_principal(request, "read")


@ui.get("/runs/{run_id}/online", dependencies=[Depends(_ui_reader)])
def ui_online(
    run_id: str,
    store: StoreDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The online run page's charts, refreshed by polling: 304 while nothing changed."""
    run = store.get_run(run_id)
    experiment = store.get_experiment(run.experiment_id, counts=False)
    if experiment.mode != "online":
        raise NotFound(f"run {run_id} is not an online run")
    etag = views.online_etag(store, run)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if if_none_match == etag:
        return Response(status_code=304, headers=headers)
    context = views.online_run(store, experiment, run, etag=etag)
    current = context["current"]
    return JSONResponse(
        {
            "figures": context["figures"],
            "version": current.version if current else None,
            "phase": current.phase if current else None,
            "step": current.step if current else None,
            "feedback_rounds": context["feedback_rounds"],
            "status": run.status,
            "active": context["active"],
        },
        headers=headers,
    )


_SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "'": "\\u0027"})


def chart_json(figure: Any) -> str:
    """JSON to embed in a ``<script>`` element: no ``</script>`` can close it early."""
    return json.dumps(figure, allow_nan=False, separators=(",", ":")).translate(_SCRIPT_SAFE)


templates.env.filters["chart_json"] = chart_json
