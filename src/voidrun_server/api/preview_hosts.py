"""Previews before the API's routes: preview hosts, and the path form's fast way in.

``PreviewHostMiddleware``: ``{port}-{sandbox id}.<VOIDRUN_PUBLIC_DOMAIN>`` goes to the proxy,
before the API.

Pure ASGI and outermost, so a preview's request body streams to the sandbox untouched (the API's
body limit and CORS policy are the API's, not the previewed app's) and the whole path belongs to
the app inside. Hosts under the domain that do not have that shape (``api.<domain>``) go on to
the API as usual. Errors are the API's JSON bodies (on a WebSocket: a denial response, where the
server supports it, else a close before accepting).

``PreviewPathMiddleware``: an HTTP request on ``/api/sandboxes/{24 hex}/ports/{port}/…`` goes
straight to the proxy, inside ``EdgeMiddleware`` (request id, metrics, CORS and the error
handlers apply as to any route) but without the router: matching a hundred routes and
FastAPI's request handling cost about as much as the whole proxied exchange. What it serves is
exactly what the path-form routes of ``routes/proxy.py`` serve (those still take WebSockets,
other ids and the redirect of ``…/ports/{port}`` without its slash).
"""

from __future__ import annotations

import logging
import re

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from ..errors import VoidRunError
from . import errors
from .proxy import METHODS, Preview, path_preview, serve

log = logging.getLogger(__name__)

_LABEL = re.compile(r"([0-9]{1,5})-([0-9a-f]{24})")
_PATH_FORM = re.compile(r"/api/sandboxes/([0-9a-f]{24})/ports/([0-9]{1,5})/")
PATH_FORM_ROUTE = "/api/sandboxes/{sandbox_id}/ports/{port}/{path}"


class _RouteLabel:
    """What ``scope["route"]`` needs for the metrics' label (``middleware.route_label``)."""

    path_format = PATH_FORM_ROUTE


class PreviewPathMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.label = _RouteLabel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in METHODS:
            match = _PATH_FORM.match(scope["path"])
            if match is not None:
                scope["route"] = self.label
                await serve(scope, receive, send, path_preview(scope, *match.groups()))
                return
        await self.app(scope, receive, send)


class PreviewHostMiddleware:
    def __init__(self, app: ASGIApp, *, domain: str) -> None:
        self.app = app
        self.suffix = f".{domain.strip('.').lower()}" if domain.strip(".") else ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        preview = self._match(scope) if self.suffix and scope["type"] != "lifespan" else None
        if preview is None:
            await self.app(scope, receive, send)
            return
        try:
            await serve(scope, receive, send, preview)
        except VoidRunError as exc:
            response = errors.error_response(errors.status_for(exc), exc.message, exc.details)
            if errors.status_for(exc) >= 500:
                log.warning("preview request failed: %s", exc)
            await _refuse(scope, receive, send, response)

    def _match(self, scope: Scope) -> Preview | None:
        host = b""
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
                break
        name = host.decode("latin-1").lower().rsplit(":", 1)[0] if host else ""
        if not name.endswith(self.suffix):
            return None
        label = _LABEL.fullmatch(name[: -len(self.suffix)])
        if label is None:
            return None
        raw = scope.get("raw_path") or scope["path"].encode()
        path = raw.split(b"?", 1)[0].decode("latin-1") or "/"
        return Preview(label.group(2), int(label.group(1)), path, "")


async def _refuse(scope: Scope, receive: Receive, send: Send, response: JSONResponse) -> None:
    if scope["type"] == "http":
        await response(scope, receive, send)
        return
    websocket = WebSocket(scope, receive, send)
    try:
        await websocket.send_denial_response(response)
    except RuntimeError:  # no denial-response extension, or already accepted
        await websocket.close(1008)
