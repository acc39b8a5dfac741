"""The preview proxy's front: one request in, one exchange with a server in the sandbox.

Both URL forms end here (``routes/proxy.py`` for ``/api/sandboxes/{id}/ports/{port}/…``,
``preview_hosts.py`` for ``{port}-{id}.<domain>``): credentials are read, the service decides
(``services/proxy.py``), then the request is relayed as plain ASGI, so bodies stream both ways:

* The request body goes up as it arrives (Content-Length kept, otherwise chunked), the response
  body comes down chunk by chunk, each sent only once the client's socket took the previous one
  (uvicorn's flow control): a slow reader slows the sandbox's server, memory stays one chunk.
* Hop-by-hop headers (RFC 9110 §7.6.1, and those the Connection header names) stay on their own
  hop; the API key, the traffic token (header, query parameter, cookie) never reach the sandbox.
  Upstream sees ``Host: localhost:<port>`` (dev servers check it) and ``X-Forwarded-For``,
  ``-Proto``, ``-Host`` and ``-Prefix`` (the path prefix of the path form).
* A client that goes away closes the upstream connection at once (a task watches for
  ``http.disconnect`` while the body streams). A server inside that breaks off mid-body aborts
  the client's connection (uvicorn closes it when the app returns before the body's end), so
  the client sees a truncated response, never a complete-looking one.

WebSockets are relayed in ``proxy_ws.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import anyio
import httpcore
from starlette.requests import HTTPConnection
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from ..errors import RequestTimeoutError
from ..services.accounts import Principal
from ..services.proxy import ProxyService, Target
from .deps import CSRF_HEADER, QUERY_KEY, SESSION_COOKIE, AppContext, principal
from .proxy_ws import relay_websocket

log = logging.getLogger(__name__)

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")  # of the path form
TOKEN_HEADER = "x-voidrun-token"
TOKEN_PARAM = "voidrun_token"
TOKEN_COOKIE = "voidrun_token"
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",  # 100-continue is this server's business with its client
    }
)
NOT_FORWARDED = frozenset(
    {
        b"host",
        b"x-api-key",
        TOKEN_HEADER.encode(),
        CSRF_HEADER.encode(),
        b"cookie",
        b"content-length",
    }
    | {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-prefix"}
    | {b"x-access-token", b"e2b-traffic-access-token"}  # the E2B gateway's (api/e2b)
)
DROPPED = HOP_BY_HOP | NOT_FORWARDED


class ClientGone(Exception):
    """The client disconnected before its request body ended."""


class UploadStalled(Exception):
    """The client sent no byte of its request body for the idle timeout."""


@dataclass(frozen=True)
class Preview:
    """One proxied request: where it goes and how it arrived."""

    sandbox_id: str
    port: int
    path: str
    """The path upstream (``/`` and below), percent-encoded as the client sent it."""
    prefix: str
    """What the client's path has in front of ``path`` ("" on a preview host)."""

    def cookie_path(self) -> str:
        return f"{self.prefix}/" if self.prefix else "/"


def path_preview(scope: Scope, sandbox_id: str, port: str) -> Preview:
    """The request's path below ``…/ports/{port}``, percent-encoded as the client sent it."""
    prefix = f"/api/sandboxes/{sandbox_id}/ports/{port}"
    raw = scope.get("raw_path") or scope["path"].encode()
    path = raw.split(b"?", 1)[0].decode("latin-1")
    below = path[len(prefix) :] if path.startswith(prefix) else scope["path"][len(prefix) :]
    number = int(port) if port.isdigit() and len(port) <= 5 else 0  # 0: never declared
    return Preview(sandbox_id, number, below or "/", prefix)


async def serve(scope: Scope, receive: Receive, send: Send, preview: Preview) -> None:
    """Authorize, wake, relay. Errors before the response starts are raised (VoidRunError)."""
    connection = HTTPConnection(scope)
    proxy = await proxy_service(connection)
    token, token_in_query = _token(connection)
    caller = await _caller(connection)
    target = await proxy.authorize(preview.sandbox_id, preview.port, caller, token)
    cookie = _token_cookie(scope, preview, token) if token_in_query else None
    await serve_target(scope, receive, send, proxy, target, preview, cookie)


async def serve_target(
    scope: Scope,
    receive: Receive,
    send: Send,
    proxy: ProxyService,
    target: Target,
    preview: Preview,
    cookie: bytes | None = None,
) -> None:
    """Relay to a target the caller may reach (authorized by the preview routes, or by the E2B
    gateway's access token); ``cookie``: the traffic-token cookie to set on the answer."""
    with proxy.limits.hold(target):
        await proxy.wake(target)
        if scope["type"] == "websocket":
            upstream = _upstream_target(scope, preview)
            headers = forwarded_headers(scope, preview)
            await relay_websocket(WebSocket(scope, receive, send), proxy, target, upstream, headers)
        else:
            await _relay_http(scope, receive, send, proxy, target, preview, cookie)


async def proxy_service(connection: HTTPConnection) -> ProxyService:
    """The app's proxy service, made on first use (and again after a lifespan restart)."""
    return await proxy_of(connection.app)


async def proxy_of(app: Any) -> ProxyService:
    """``proxy_service`` of an app (the E2B gateway calls it with the main app)."""
    ctx: AppContext = app.state.ctx
    sandboxes = ctx.sandbox_service()
    state = app.state
    current: ProxyService | None = getattr(state, "preview_proxy", None)
    if current is None or current.sandboxes is not sandboxes:
        made = await ProxyService.create(ctx.settings, sandboxes)
        current = getattr(state, "preview_proxy", None)  # another request may have won
        if current is None or current.sandboxes is not sandboxes:
            state.preview_proxy = current = made
    return current


async def _caller(connection: HTTPConnection) -> Principal | None:
    key = connection.headers.get("x-api-key")
    if not key and connection.scope["type"] == "websocket":
        key = connection.query_params.get(QUERY_KEY)
    return await principal(connection, key) if key else None


def _token(connection: HTTPConnection) -> tuple[str | None, bool]:
    """The traffic token and whether it came in the query (then it becomes a cookie)."""
    header = connection.headers.get(TOKEN_HEADER)
    if header:
        return header, False
    query = connection.query_params.get(TOKEN_PARAM)
    if query:
        return query, True
    return connection.cookies.get(TOKEN_COOKIE) or None, False


def _token_cookie(scope: Scope, preview: Preview, token: str | None) -> bytes | None:
    if not token:
        return None
    secure = "; Secure" if scope.get("scheme") in ("https", "wss") else ""
    return (
        f"{TOKEN_COOKIE}={token}; Path={preview.cookie_path()}; HttpOnly; SameSite=Lax{secure}"
    ).encode()


def _upstream_target(scope: Scope, preview: Preview) -> bytes:
    """Path and query for the sandbox: our credentials taken out of the query."""
    query: bytes = scope.get("query_string", b"")
    if query and (TOKEN_PARAM.encode() in query or QUERY_KEY.encode() in query):
        kept = [
            (k, v)
            for k, v in parse_qsl(query.decode("latin-1"), keep_blank_values=True)
            if k not in (TOKEN_PARAM, QUERY_KEY)
        ]
        query = urlencode(kept).encode("latin-1")
    path = preview.path.encode("latin-1")
    return path + b"?" + query if query else path


def forwarded_headers(scope: Scope, preview: Preview) -> list[tuple[bytes, bytes]]:
    """The client's end-to-end headers for the sandbox, plus Host and X-Forwarded-*."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    dropped: frozenset[bytes] | set[bytes] = DROPPED
    host = b""
    forwarded_for = b""
    cookies: list[str] = []
    for name, value in headers:
        if name == b"connection":
            dropped = set(dropped) | {v.strip().lower() for v in value.split(b",")}
        elif name == b"host":
            host = value
        elif name == b"x-forwarded-for":
            forwarded_for = value
        elif name == b"cookie":
            cookies.append(value.decode("latin-1"))
    out = [(name, value) for name, value in headers if name not in dropped]
    kept_cookies = _without_token_cookie(cookies)
    if kept_cookies:
        out.append((b"cookie", kept_cookies.encode("latin-1")))
    client = (scope.get("client") or ("", 0))[0].encode()
    scheme = {"wss": "https", "ws": "http"}.get(scope.get("scheme", "http"), scope.get("scheme"))
    out += [
        (b"host", f"localhost:{preview.port}".encode()),
        (b"x-forwarded-for", _forwarded_for(forwarded_for, client)),
        (b"x-forwarded-proto", str(scheme).encode()),
    ]
    if host:
        out.append((b"x-forwarded-host", host))
    if preview.prefix:
        out.append((b"x-forwarded-prefix", preview.prefix.encode("latin-1")))
    return out


def _forwarded_for(chain: bytes, client: bytes) -> bytes:
    """The chain with the client appended, unless uvicorn already took the client from it
    (``--proxy-headers`` with a trusted peer: then it ends with the client)."""
    if not chain:
        return client
    if chain.rsplit(b",", 1)[-1].strip() == client:
        return chain
    return chain + b", " + client


# The traffic token and the dashboard's session (a top-level visit of a path-form preview
# carries the API origin's cookies): neither may reach code in the sandbox.
PRIVATE_COOKIES = frozenset({TOKEN_COOKIE, SESSION_COOKIE})


def _without_token_cookie(cookie_headers: list[str]) -> str:
    kept = []
    for header in cookie_headers:
        for part in header.split(";"):
            name = part.split("=", 1)[0].strip()
            if name and name not in PRIVATE_COOKIES:
                kept.append(part.strip())
    return "; ".join(kept)


async def _relay_http(
    scope: Scope,
    receive: Receive,
    send: Send,
    proxy: ProxyService,
    target: Target,
    preview: Preview,
    cookie: bytes | None,
) -> None:
    headers = forwarded_headers(scope, preview)
    length = _header(scope, b"content-length")
    chunked = b"chunked" in (_header(scope, b"transfer-encoding") or b"").lower()
    body = None
    idle = proxy.settings.proxy_idle_timeout_seconds
    if length is not None:
        headers.append((b"content-length", length))
        body = _request_body(receive, idle)
    elif chunked:
        headers.append((b"transfer-encoding", b"chunked"))
        body = _request_body(receive, idle)
    method = scope["method"].encode()
    try:
        response = await proxy.send(target, method, _upstream_target(scope, preview), headers, body)
    except ClientGone:
        return
    except UploadStalled:
        stalled = f"no byte of the request body for {idle:g}s"
        raise RequestTimeoutError(
            details=f"{stalled} (VOIDRUN_PROXY_IDLE_TIMEOUT_SECONDS)"
        ) from None
    stream: Any = response.stream
    try:
        start = {
            "type": "http.response.start",
            "status": response.status,
            "headers": _response_headers(response.headers, cookie, preview),
        }
        await _stream_down(response, start, receive, send, proxy, target)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await stream.aclose()  # closes the connection (the exchange did not end cleanly)
        raise
    # back to the pool when complete, else closed (Response.aclose, minus its isinstance of a
    # typing generic)
    await stream.aclose()


# The path form serves sandbox pages on the API's own origin: such a page runs in an opaque
# origin (a CSP sandbox without allow-same-origin), so its scripts cannot read the API's or
# other previews' responses and cookies, and its cookies stay below its own prefix.
PATH_FORM_CSP = b"sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads"


def _response_headers(
    upstream: list[tuple[bytes, bytes]], cookie: bytes | None, preview: Preview
) -> list[tuple[bytes, bytes]]:
    dropped = set(HOP_BY_HOP)
    for name, value in upstream:
        if name.lower() == b"connection":
            dropped.update(v.strip().lower() for v in value.split(b","))
    out = [(name.lower(), value) for name, value in upstream if name.lower() not in dropped]
    if preview.prefix:
        path = preview.cookie_path().encode()
        out = [(n, _confined_cookie(v, path) if n == b"set-cookie" else v) for n, v in out]
        out.append((b"content-security-policy", PATH_FORM_CSP))
    if cookie is not None:
        out.append((b"set-cookie", cookie))
    return out


def _confined_cookie(value: bytes, path: bytes) -> bytes:
    """A sandbox's cookie on the API origin: host-only (no Domain) and below its prefix."""
    parts = [p.strip() for p in value.split(b";")]
    kept = [p for p in parts[1:] if not p.lower().startswith((b"path=", b"domain="))]
    return b"; ".join([parts[0], *kept, b"Path=" + path])


async def _stream_down(
    response: httpcore.Response,
    start: Message,
    receive: Receive,
    send: Send,
    proxy: ProxyService,
    target: Target,
) -> None:
    """Response head and body to the client until the body's end, the client leaving, the
    sandbox's server breaking off, or no byte moving for the idle timeout (either side stalled:
    the server inside, or a client that stopped reading). In the last two the client's
    connection is aborted (return without the body's end).

    The client is watched by a plain asyncio task, cancelled when the body ends: an anyio task
    group costs more than the rest of a small exchange (its cancel formats the task's repr).
    The idle deadline is pushed on as chunks go to the client (at most every 1/16 of it: a
    stall is cut after 15/16 to 16/16 of the idle timeout)."""
    idle = proxy.settings.proxy_idle_timeout_seconds
    loop = asyncio.get_running_loop()
    pushed = loop.time()
    watch = asyncio.timeout_at(pushed + idle)  # a fraction of an anyio cancel scope's cost
    inside = client_gone = False

    def left() -> None:
        nonlocal client_gone
        client_gone = True
        if inside:
            watch.reschedule(loop.time())  # cancel now

    watcher = loop.create_task(_watch_client(receive, left))
    broken: Exception | None = None
    try:
        async with watch:
            inside = True
            await send(start)
            stream: Any = response.stream
            async for chunk in stream:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if client_gone:  # uvicorn's send to a gone client returns at once
                    break
                now = loop.time()
                if now - pushed > idle / 16:
                    pushed = now
                    watch.reschedule(now + idle)
                proxy.touch(target)
            inside = False
    except TimeoutError:
        if not watch.expired():
            raise
    except (httpcore.ProtocolError, httpcore.NetworkError, httpcore.TimeoutException) as exc:
        broken = exc
    finally:
        inside = False
        watcher.cancel()
    if client_gone:
        return
    if watch.expired():
        log.info("preview %s:%d: no byte moved for %gs", target.sandbox_id, target.port, idle)
        return
    if broken is not None:
        log.info("preview %s:%d: response broke off: %s", target.sandbox_id, target.port, broken)
        return
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _watch_client(receive: Receive, left: Callable[[], None]) -> None:
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    except Exception:  # the server's receive failed: as good as gone
        pass
    left()


async def _request_body(receive: Receive, idle: float) -> AsyncIterator[bytes]:
    while True:
        with anyio.move_on_after(idle) as waiting:
            message = await receive()
        if waiting.cancelled_caught:
            raise UploadStalled
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None
