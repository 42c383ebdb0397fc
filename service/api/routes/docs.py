"""``/docs``: Swagger UI for ``/openapi.json``, served from the installed ``swagger-ui-bundle``
package, so the page works on a machine without internet (FastAPI's default loads it from a
CDN)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from swagger_ui_bundle import swagger_ui_path

from mixopt.errors import NotFound

router = APIRouter(include_in_schema=False)

ASSETS = Path(swagger_ui_path)
SERVED = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    prefix = request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=f"{prefix}{request.app.openapi_url}",
        title=f"{request.app.title} - API reference",
        swagger_js_url=f"{prefix}/docs/assets/swagger-ui-bundle.js",
        swagger_css_url=f"{prefix}/docs/assets/swagger-ui.css",
        swagger_favicon_url=f"{prefix}/docs/assets/favicon-32x32.png",
    )


@router.get("/docs/assets/{name}")
async def swagger_asset(name: str) -> FileResponse:
    if name not in SERVED:
        raise NotFound(f"no documentation asset {name!r}")
    return FileResponse(
        ASSETS / name, media_type=SERVED[name], headers={"Cache-Control": "max-age=86400"}
    )
