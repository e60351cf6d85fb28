"""The web dashboard at ``/`` and Swagger UI at ``/docs``, both from files inside the installed packages.

Nothing is fetched from a CDN, so both pages work on a machine without internet. The files are served by
plain routes (not a ``StaticFiles`` mount) so that the access policy in ``api.auth`` decides about them
like about every other route: they are public (they hold no data; the page asks for the key itself).
Only names listed in the folder are served: no path from the client reaches the file system.
"""

from __future__ import annotations

import mimetypes
from functools import lru_cache
from pathlib import Path

import swagger_ui_bundle
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse

from api.errors import NotFound

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
SWAGGER_DIR = Path(str(swagger_ui_bundle.swagger_ui_path))
# The only Swagger UI files the docs page loads (the bundle holds source maps and other variants too).
SWAGGER_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")
# Pages change with the package; a browser must revalidate rather than run yesterday's script.
NO_CACHE = {"Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


@lru_cache(maxsize=1)
def _static_files() -> dict[str, Path]:
    return {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and not p.name.startswith(".")}


def _file(path: Path) -> FileResponse:
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers=NO_CACHE)


@router.get("/")
async def dashboard() -> FileResponse:
    return _file(STATIC_DIR / "index.html")


@router.get("/static/{name}")
async def static_file(name: str) -> FileResponse:
    path = _static_files().get(name)
    if path is None:
        raise NotFound(f"no static file {name!r}")
    return _file(path)


@router.get("/docs/assets/{name}")
async def swagger_asset(name: str) -> FileResponse:
    if name not in SWAGGER_FILES:
        raise NotFound(f"no docs asset {name!r}")
    return _file(SWAGGER_DIR / name)


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=f"{root}/openapi.json", title="recdistill API",
        oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
        swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
        swagger_favicon_url=f"{root}/docs/assets/favicon-32x32.png",
    )


@router.get("/docs/oauth2-redirect")
async def swagger_oauth2_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()
