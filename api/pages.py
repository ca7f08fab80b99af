"""HTML pages served by the API: the public tracking page, the ops map, and their static files.

`router` serves `GET /track/{tracking_id}`, `GET /ops` and `GET /static/{path}`. The pages are
plain HTML + ES modules from `api/static/` (no build step, no CDN); all their data comes from the
public API and WebSockets of API.md, so this module needs nothing from the engine.
"""

from __future__ import annotations

import functools
import html
import re
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

from engine.protocol import ID_MAX
from engine.settings import Settings

STATIC_DIR = Path(__file__).parent / "static"

# Only assets are served raw; the HTML templates are filled in by the page routes below.
_ASSET_SUFFIXES = frozenset({".js", ".css", ".svg", ".png", ".ico"})
# Ids are `TRK-` + url-safe characters; anything else cannot name a session, and refusing it
# keeps odd bytes out of the page before escaping even matters.
_TRACKING_ID = re.compile(rf"[A-Za-z0-9_-]{{1,{ID_MAX}}}")

router = APIRouter(include_in_schema=False)
_static = StaticFiles(directory=STATIC_DIR)


def tile_settings(request: Request) -> tuple[str, str]:
    """The optional map tile URL template and its attribution text ("" when unset)."""
    settings: Settings = request.app.state.settings
    return (settings.tile_url or "", settings.tile_attribution or "")


def tile_img_source(template: str) -> str:
    """The CSP `img-src` entry that lets the browser fetch tiles from `template` ("" if none)."""
    if not template:
        return ""
    parts = urlsplit(template)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return ""
    host = parts.netloc.replace("{s}", "*")
    if "{" in host or "}" in host:
        return f"{parts.scheme}:"
    return f"{parts.scheme}://{host}"


def _security_headers(tile_url: str) -> dict[str, str]:
    img_src = " ".join(s for s in ("'self'", "data:", tile_img_source(tile_url)) if s)
    csp = (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"img-src {img_src}; connect-src 'self' ws: wss:; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": csp,
        # The tracking URL is a bearer secret: never leak it to a tile server in a Referer.
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-Robots-Tag": "noindex, nofollow",
        "Cache-Control": "no-store",
    }


@functools.cache
def _template(name: str) -> str:
    return (STATIC_DIR / name).read_text(encoding="utf-8")


def render_page(template_name: str, values: dict[str, str]) -> str:
    """Fill `{{name}}` placeholders of a template in `api/static/` with HTML-escaped values."""
    text = _template(template_name)
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", html.escape(value, quote=True))
    return text


def _page(
    request: Request, template_name: str, values: dict[str, str], status_code: int = 200
) -> HTMLResponse:
    tile_url, attribution = tile_settings(request)
    body = render_page(
        template_name, {"tile_url": tile_url, "tile_attribution": attribution, **values}
    )
    return HTMLResponse(body, status_code=status_code, headers=_security_headers(tile_url))


@router.get("/track/{tracking_id}", response_class=HTMLResponse)
async def track_page(tracking_id: str, request: Request) -> HTMLResponse:
    """The public live tracking page a customer opens from an SMS link."""
    if not _TRACKING_ID.fullmatch(tracking_id):
        # The page itself tells "not found" apart from "expired" by asking the API.
        return _page(request, "track.html", {"tracking_id": ""}, status_code=404)
    return _page(request, "track.html", {"tracking_id": tracking_id})


@router.get("/ops", response_class=HTMLResponse)
async def ops_page(request: Request) -> HTMLResponse:
    """The ops map; the page asks for a superadmin token and uses it on `/ws/ops`."""
    return _page(request, "ops.html", {})


@router.get("/static/{path:path}")
async def static_file(path: str, request: Request) -> Response:
    """Page assets (JS modules, CSS) shipped inside the package."""
    if Path(path).suffix not in _ASSET_SUFFIXES:
        raise HTTPException(status_code=404, detail=f"No static file {path!r}")
    response: Response = await _static.get_response(path, request.scope)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers.setdefault("Cache-Control", "no-cache")
    return response
