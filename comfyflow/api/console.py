"""The web console at ``/ui``: static files shipped in the package (plain HTML, CSS and JavaScript, no build step,
nothing from a CDN), served with a Content-Security-Policy that allows no inline script.

The pages themselves hold no data and need no credentials; the script signs in with an API key kept in the tab's
session storage and calls the API with it. ``GET /api/v1/console`` (authenticated) tells the script where the
Prefect UI is.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from urllib.parse import urlsplit

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from comfyflow import __version__
from comfyflow.errors import NotFound

bp = Blueprint("console")
PREFIX = "/ui"
FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
         "style.css": "text/css; charset=utf-8", "favicon.svg": "image/svg+xml"}  # fmt: skip


@cache
def _file(name: str) -> bytes:
    return (resources.files("comfyflow.api") / "static" / name).read_bytes()


def _origin(url: str | None) -> str:
    parts = urlsplit(url or "")
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") and parts.netloc else ""


def security_headers(request: Request) -> dict[str, str]:
    """No inline script or style; images from this API, blobs (the contact sheet, fetched with the key) and the
    storage's public endpoint (presigned artifact links)."""
    storage = _origin(request.app.ctx.settings.storage_public_endpoint)
    csp = (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        f"img-src 'self' blob: data:{' ' + storage if storage else ''}; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",  # artifact links carry signatures
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-cache",
    }


#: Paths that answer without credentials (exactly these: the files hold no data).
PUBLIC_PATHS = frozenset({PREFIX, f"{PREFIX}/", *(f"{PREFIX}/{name}" for name in FILES)})


@bp.get(PREFIX)
async def index(request: Request) -> HTTPResponse:
    return HTTPResponse(_file("index.html"), headers=security_headers(request), content_type=FILES["index.html"])


@bp.get(f"{PREFIX}/<name:str>")
async def static(request: Request, name: str) -> HTTPResponse:
    if name not in FILES:
        raise NotFound(f"No console file {name!r}; the console is at {PREFIX}/.", details={"path": request.path})
    return HTTPResponse(_file(name), headers=security_headers(request), content_type=FILES[name])


@bp.get("/api/v1/console")
async def console_config(request: Request) -> HTTPResponse:
    """What the console needs besides the API: the Prefect UI's address (None when Prefect is off)."""
    settings = request.app.ctx.settings
    api_url = request.app.ctx.prefect_api_url if settings.prefect_enabled else None
    ui = api_url.rstrip("/").removesuffix("/api") if api_url else None
    return json({"prefect_ui": ui, "version": __version__})
