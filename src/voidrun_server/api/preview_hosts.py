"""Preview hosts: ``{port}-{sandbox id}.<VOIDRUN_PUBLIC_DOMAIN>`` goes to the proxy, before the API.

Pure ASGI and outermost, so a preview's request body streams to the sandbox untouched (the API's
body limit and CORS policy are the API's, not the previewed app's) and the whole path belongs to
the app inside. Hosts under the domain that do not have that shape (``api.<domain>``) go on to
the API as usual. Errors are the API's JSON bodies (on a WebSocket: a denial response, where the
server supports it, else a close before accepting).
"""

from __future__ import annotations

import logging
import re

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from ..errors import VoidRunError
from . import errors
from .proxy import Preview, serve

log = logging.getLogger(__name__)

_LABEL = re.compile(r"([0-9]{1,5})-([0-9a-f]{24})")


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
