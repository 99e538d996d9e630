"""The live page at `GET /`: plain HTML, CSS and JavaScript in this package, no build step.

The page talks to the hub only through its public API (`/streams`, `/events` through the
browser's own `EventSource`, `POST /streams/{name}/events`), so it is a client like any
other: what a caller may see and do is decided there, by the same grants.
"""

from __future__ import annotations

from html import escape
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from ..errors import RequestError

__all__ = ["add_page"]

_ASSETS = {
    "page.js": "text/javascript; charset=utf-8",
    "page.css": "text/css; charset=utf-8",
}

# The page loads only its own files and talks only to its own hub; nothing may frame it (it
# holds a publish form and a token field).
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def add_page(app: FastAPI) -> None:
    """Serve the page at `GET /` and its assets at `GET /page/{name}`, under any prefix the
    app is mounted at (the page's URLs start with the request's `root_path`)."""
    here = files(__name__)
    html = (here / "index.html").read_text(encoding="utf-8")
    assets = {name: (here / name).read_bytes() for name in _ASSETS}

    @app.get("/", include_in_schema=False)
    async def page(request: Request) -> HTMLResponse:
        root = escape(request.scope.get("root_path", "").rstrip("/"), quote=True)
        return HTMLResponse(html.replace("{root}", root), headers=_HEADERS)

    @app.get("/page/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        body = assets.get(name)
        if body is None:
            raise RequestError(
                404, "not_found", f"the page has no file {name[:64]!r}; it has {', '.join(_ASSETS)}"
            )
        return Response(body, media_type=_ASSETS[name], headers=_HEADERS)
