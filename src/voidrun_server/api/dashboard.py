"""The web dashboard's files: ``/`` (the page) and ``/ui/...`` (its modules and assets).

The pages are plain ES modules under ``<dashboard>/ui`` (no build step); the third-party assets
come from ``<dashboard>/node_modules`` (``npm ci``, run by ``make install``), and only the files
listed in :data:`VENDOR` are served from there. When they are missing, ``/`` says how to install
them instead of showing a blank page. The pages talk to the public ``/api`` routes with the
session cookie (``api/routes/auth.py``); nothing here reads the database.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response

from ..config import Settings
from ..errors import NotFoundError

VENDOR = {
    "xterm.mjs": "@xterm/xterm/lib/xterm.mjs",
    "xterm.css": "@xterm/xterm/css/xterm.css",
    "addon-fit.mjs": "@xterm/addon-fit/lib/addon-fit.mjs",
    "uPlot.esm.js": "uplot/dist/uPlot.esm.js",
    "uPlot.min.css": "uplot/dist/uPlot.min.css",
}
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The pages load only same-origin scripts and styles; inline styles are xterm's and uPlot's.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
MISSING = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>VoidRun dashboard: not installed</title></head><body style="font-family:sans-serif">
<h1>The dashboard's assets are not installed</h1>
<p>Missing: <code>{missing}</code></p>
<p>Run <code>make install</code> (it runs <code>npm ci</code> in <code>dashboard/</code>), or
<code>cd dashboard &amp;&amp; npm ci</code>, then reload. Point
<code>VOIDRUN_DASHBOARD_DIR</code> elsewhere if the files live in another place.</p>
<p>The API itself works: <a href="/api/docs">/api/docs</a>.</p></body></html>"""


def _file(path: Path, kind: str, request: Request) -> Response:
    """The file, or 304 when the browser's copy is current (``Cache-Control: no-cache`` makes
    it ask on every load; the answer is a few hundred bytes instead of xterm's 340 KB)."""
    info = path.stat()
    etag = f'"{info.st_mtime_ns:x}-{info.st_size:x}"'
    headers = {**HEADERS, "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return FileResponse(path, headers=headers, media_type=kind, stat_result=info)


def missing_assets(root: Path) -> list[str]:
    wanted = [root / "ui" / "index.html"] + [root / "node_modules" / p for p in VENDOR.values()]
    return [str(p) for p in wanted if not p.is_file()]


def router(settings: Settings) -> APIRouter:
    root = settings.dashboard_root
    ui = (root / "ui").resolve()
    routes = APIRouter(include_in_schema=False)

    @routes.get("/")
    async def index(request: Request) -> Response:
        missing = missing_assets(root)
        if missing:
            return HTMLResponse(MISSING.format(missing=", ".join(missing)), 503, HEADERS)
        return _file(ui / "index.html", TYPES[".html"], request)

    @routes.get("/ui/vendor/{name}")
    async def vendor(name: str, request: Request) -> Response:
        relative = VENDOR.get(name)
        path = root / "node_modules" / relative if relative else None
        if path is None or not path.is_file():
            raise NotFoundError("no such dashboard asset", name)
        return _file(path, TYPES[Path(name).suffix], request)

    @routes.get("/ui/{path:path}")
    async def asset(path: str, request: Request) -> Response:
        target = (ui / path).resolve()
        kind = TYPES.get(target.suffix)
        if kind is None or not target.is_relative_to(ui) or not target.is_file():
            raise NotFoundError("no such dashboard asset", path)
        return _file(target, kind, request)

    return routes
