"""The one middleware between the HTTP server and the router (``EdgeMiddleware``).

Everything a request needs before and after its route, in one pure-ASGI layer (no
``BaseHTTPMiddleware``: streaming responses stay streaming, and a layer costs a few
microseconds, not a task): a request id, URL and JSON-body limits, CORS, metrics, and the
exception handlers of ``api/errors.py`` (what Starlette's ``ServerErrorMiddleware`` and
``ExceptionMiddleware`` did, and FastAPI's ``AsyncExitStackMiddleware``). It replaces
FastAPI's default stack of seven layers; ``api/app.py`` installs it.

CORS does work only when a request carries ``Origin``: preflights and simple responses are
then answered by Starlette's ``CORSMiddleware`` logic, unchanged. Without ``Origin`` the only
trace of CORS is the ``Vary: Origin`` that Starlette adds to every response (the answer would
differ for a request with an ``Origin``), added here directly.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette._exception_handler import _lookup_exception_handler
from starlette._utils import is_async_callable
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, ExceptionHandler, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = b"x-request-id"
_SAFE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
_VARY = b"vary"
_VARY_ORIGIN = (_VARY, b"Origin")

# Routes whose bodies are streamed (to disk, or to a sandbox's server through the preview proxy)
# and so are exempt from the JSON body limit.
STREAMED_BODY_SUFFIXES = ("/files/upload",)
STREAMED_BODY_PATHS = re.compile(r"/api/sandboxes/[^/]+/ports/")
# In-sandbox calls of the E2B gateway (api/e2b) stream uploads, RPC streams and proxied ports;
# the gateway bounds its RPC messages itself.
E2B_PREFIX = "/e2b/"
E2B_SANDBOX_HEADER = b"e2b-sandbox-id"


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "voidrun_http_requests_total",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "voidrun_http_request_duration_seconds",
            "Time to the end of the response, by method and route template.",
            ["method", "route"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )
        # ``labels()`` validates and locks on every call; the label sets are few (methods ×
        # route templates × statuses), so each child is looked up once and kept.
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._histograms: dict[tuple[str, str], Any] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        counter = self._counters.get((method, route, status))
        if counter is None:
            counter = self.requests.labels(method, route, str(status))
            self._counters[method, route, status] = counter
        histogram = self._histograms.get((method, route))
        if histogram is None:
            histogram = self.duration.labels(method, route)
            self._histograms[method, route] = histogram
        counter.inc()
        histogram.observe(seconds)


async def _send_error(send: Send, status: int, error: str, details: str, request_id: bytes) -> None:
    body = json.dumps({"error": error, "details": details}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (REQUEST_ID_HEADER, request_id),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def new_request_id() -> bytes:
    """32 hex digits shaped like a UUID4's (version and variant bits set), from one urandom
    call: ``uuid.uuid4().hex`` builds a ``UUID`` object to get the same."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return raw.hex().encode()


class EdgeMiddleware:
    """The whole middleware stack; see the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: HttpMetrics | None,
        max_body: int,
        max_url: int,
        cors: Mapping[str, Any],
        exception_handlers: Mapping[Any, ExceptionHandler],
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body
        self.max_url = max_url
        # Starlette's CORS logic, used only for requests with an Origin (never called as an app).
        self.cors = CORSMiddleware(app, **cors)
        # The handler tables exactly as Starlette's ExceptionMiddleware builds them (its
        # HTTPException and WebSocketException defaults, then ours); the catch-all handler for
        # ``Exception`` (or 500) is what ServerErrorMiddleware would call.
        handlers = {k: v for k, v in exception_handlers.items() if k not in (500, Exception)}
        tables = ExceptionMiddleware(app, handlers=handlers)
        self.handlers = (tables._exception_handlers, tables._status_handlers)
        self.unexpected = exception_handlers.get(Exception) or exception_handlers.get(500)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        request_id = b""
        origin: bytes | None = None
        in_sandbox = False
        for name, value in headers:
            if name == REQUEST_ID_HEADER and not request_id and _SAFE_REQUEST_ID.match(value):
                request_id = bytes(value)
            elif name == b"origin" and origin is None:
                origin = value
            elif name == E2B_SANDBOX_HEADER:
                in_sandbox = True
        if not request_id:
            request_id = new_request_id()
        if len(scope.get("raw_path") or b"") + len(scope.get("query_string", b"")) > self.max_url:
            if kind == "http":
                await _send_error(send, 414, "Request URI too long", "shorten the URL", request_id)
            return
        began = time.perf_counter()
        status = 500
        response_started = False

        add_vary = kind == "http" and origin is None  # with an Origin, CORS's own send adds it

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                out_headers = _with_vary(message.get("headers", ()), add_vary)
                out_headers.append((REQUEST_ID_HEADER, request_id))
                message["headers"] = out_headers
            await send(message)

        out: Send = send_with_id
        path = scope["path"]
        streamed = (
            path.endswith(STREAMED_BODY_SUFFIXES)
            or STREAMED_BODY_PATHS.match(path)
            or (in_sandbox and path.startswith(E2B_PREFIX))
        )
        if kind == "http" and not streamed:
            replay = await self._read_limited_body(scope, receive, send, request_id)
            if replay is None:
                return
            receive = replay
        if origin is not None and kind == "http":
            request_headers = Headers(scope=scope)
            if scope["method"] == "OPTIONS" and "access-control-request-method" in request_headers:
                preflight = self.cors.preflight_response(request_headers=request_headers)
                await preflight(scope, receive, out)
                self._observe(scope, status, began)
                return
            inner = out

            async def send_cors(message: Message) -> None:
                await self.cors.send(message, inner, request_headers)

            out = send_cors

        scope["starlette.exception_handlers"] = self.handlers
        try:
            try:
                async with AsyncExitStack() as files:  # FastAPI closes uploaded files with it
                    scope["fastapi_middleware_astack"] = files
                    await self.app(scope, receive, out)
            except Exception as exc:
                await self._handle(exc, scope, receive, out, response_started)
        finally:
            self._observe(scope, status, began)

    def _observe(self, scope: Scope, status: int, started: float) -> None:
        if self.metrics is not None and scope["type"] == "http":
            duration = time.perf_counter() - started
            self.metrics.observe(scope["method"], route_label(scope), status, duration)

    async def _handle(
        self, exc: Exception, scope: Scope, receive: Receive, send: Send, started: bool
    ) -> None:
        """An exception no route handled: the handler table, else the 500 handler."""
        conn: Request | WebSocket
        if scope["type"] == "http":
            conn = Request(scope, receive, send)
        else:
            conn = WebSocket(scope, receive, send)
        exception_handlers, status_handlers = self.handlers
        handler = status_handlers.get(exc.status_code) if isinstance(exc, HTTPException) else None
        if handler is None:
            handler = _lookup_exception_handler(exception_handlers, exc)
        if handler is not None:
            if started:
                raise RuntimeError("handled exception, but the response already started") from exc
            response = await _call(handler, conn, exc)
            if response is not None:
                await response(scope, receive, send)
            exc.__traceback__ = None  # reused exception instances accumulate tracebacks
            return
        if scope["type"] != "http" or self.unexpected is None:
            raise exc
        response = await _call(self.unexpected, conn, exc)  # logs the traceback
        if started or response is None:
            raise exc  # the server closes the connection: half a response cannot be finished
        await response(scope, receive, send)

    async def _read_limited_body(
        self, scope: Scope, receive: Receive, send: Send, request_id: bytes
    ) -> Receive | None:
        """Read a small body fully (so a too-large one is refused before any work), then replay."""
        declared = _content_length(scope)
        too_large = f"the limit is {self.max_body} bytes"
        if declared is not None and declared > self.max_body:
            await _send_error(send, 413, "Request body too large", too_large, request_id)
            return None
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body = message.get("body", b"")
        if len(body) > self.max_body:
            await _send_error(send, 413, "Request body too large", too_large, request_id)
            return None
        if message.get("more_body", False):
            chunks = [body]
            size = len(body)
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body:
                    await _send_error(send, 413, "Request body too large", too_large, request_id)
                    return None
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay


async def _call(handler: ExceptionHandler, conn: Request | WebSocket, exc: Exception) -> Any:
    if is_async_callable(handler):
        return await handler(conn, exc)  # type: ignore[arg-type]
    return await run_in_threadpool(handler, conn, exc)  # type: ignore[arg-type]


def _with_vary(headers: Any, add_vary: bool) -> list[tuple[bytes, bytes]]:
    """The response's headers as a new list, with ``Vary: Origin`` added as Starlette's CORS
    adds it to an HTTP response when the request had no Origin."""
    out = list(headers)
    if not add_vary:
        return out
    found = [i for i, (name, _) in enumerate(out) if name == _VARY]
    if not found:
        out.append(_VARY_ORIGIN)
        return out
    # As Starlette's MutableHeaders does it: every Vary value joined into the first, then Origin.
    merged = b", ".join([*(out[i][1] for i in found), b"Origin"])
    for i in reversed(found[1:]):
        del out[i]
    out[found[0]] = (_VARY, merged)
    return out


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def route_label(scope: Scope) -> str:
    """The matched route template (``/api/sandboxes/{id}``), so ids do not explode cardinality."""
    return getattr(scope.get("route"), "path_format", None) or "unmatched"
