"""Previews: declared ports of a sandbox through the proxy, and the URLs that reach them.

The path form, ``/api/sandboxes/{id}/ports/{port}/{path}``, works with no DNS at all (the
trailing slash after the port is needed: without it the server redirects). The preview-host
form, ``{port}-{id}.<VOIDRUN_PUBLIC_DOMAIN>``, is routed by ``api/preview_hosts.py`` before any
API route. Both end in ``api/proxy.py``; ``docs/previews.md`` has the rules.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request, WebSocket
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ...config import Settings
from ...schemas.common import envelope
from ...schemas.sandboxes import PublicUrl
from ..deps import Caller, Ctx
from ..proxy import METHODS, Preview, path_preview, proxy_service, serve
from .sandboxes import Service

router = APIRouter(prefix="/api/sandboxes", tags=["Sandboxes"])
PORT_PATH = "/{sandbox_id}/ports/{port}/{path:path}"
DEFAULT_PORTS = {"http": 80, "https": 443}


class _Relay(Response):
    """Hands the raw ASGI connection to the proxy (bodies stream; nothing is buffered)."""

    def __init__(self, preview: Preview) -> None:
        super().__init__()
        self.preview = preview

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await serve(scope, receive, send, self.preview)


def _http_route(method: str) -> None:
    async def proxy(sandbox_id: str, port: str, path: str, request: Request) -> Response:
        return _Relay(path_preview(request.scope, sandbox_id, port))

    proxy.__name__ = f"proxy_port_{method.lower()}"
    router.add_api_route(
        PORT_PATH,
        proxy,
        methods=[method],
        response_class=Response,
        summary=f"{method} through the preview proxy to a declared port",
        description=(
            "Relays the request to the server on `port` inside the sandbox (HTTP/1.1, streamed "
            "both ways). Credentials: `X-API-Key` of the sandbox's org, or its traffic token "
            "(`X-VoidRun-Token` header, `voidrun_token` query parameter or cookie); none for a "
            "port declared `public`. 404: unknown sandbox or undeclared port; 502: nothing "
            "listens there or it answered garbage; 504: no response head in time."
        ),
    )


for _method in METHODS:
    _http_route(_method)


@router.websocket(PORT_PATH)
async def proxy_port_websocket(websocket: WebSocket, sandbox_id: str, port: str, path: str) -> None:
    """A WebSocket to the declared port (the key may also come as ``?apiKey=``)."""
    preview = path_preview(websocket.scope, sandbox_id, port)
    await serve(websocket.scope, websocket.receive, websocket.send, preview)


@router.get("/{sandbox_id}/public-urls")
async def public_urls(
    sandbox_id: str, caller: Caller, sandboxes: Service, ctx: Ctx, request: Request
) -> dict[str, Any]:
    """A URL per declared http port, with whether it is public and the sandbox's traffic token
    (for private ports: ``X-VoidRun-Token`` header, ``voidrun_token`` query or cookie)."""
    row = await sandboxes.get(caller, sandbox_id)
    token = (await proxy_service(request)).token_for(row.id)
    urls = [
        PublicUrl(
            port=p["port"],
            url=preview_url(ctx.settings, row.id, p["port"], row.name),
            public=p.get("public") is True,
            trafficToken=token,
        ).model_dump()
        for p in row.ports
        if p.get("protocol", "http") == "http"
    ]
    return envelope("Public URLs fetched", urls)


def preview_url(settings: Settings, sandbox_id: str, port: int, name: str) -> str:
    template = settings.public_url_template
    if template:
        return template.format(id=sandbox_id, short_id=sandbox_id[-8:], port=port, name=name)
    base = settings.external_base_url
    if settings.public_domain:
        parts = urlsplit(base)
        shown = parts.port is not None and parts.port != DEFAULT_PORTS.get(parts.scheme)
        suffix = f":{parts.port}" if shown else ""
        return f"{parts.scheme}://{port}-{sandbox_id}.{settings.public_domain}{suffix}/"
    return f"{base}/api/sandboxes/{sandbox_id}/ports/{port}/"
