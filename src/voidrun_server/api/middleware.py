"""One pure-ASGI middleware for what every request needs: a request id, size limits, metrics.

Pure ASGI (not ``BaseHTTPMiddleware``) keeps streaming responses streaming and costs a few
microseconds per request.
"""

from __future__ import annotations

import json
import re
import time
import uuid

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = b"x-request-id"
_SAFE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")

# Routes whose bodies are streamed (to disk, or to a sandbox's server through the preview proxy)
# and so are exempt from the JSON body limit.
STREAMED_BODY_SUFFIXES = ("/files/upload",)
STREAMED_BODY_PATHS = re.compile(r"/api/sandboxes/[^/]+/ports/")


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


class RequestContextMiddleware:
    def __init__(
        self, app: ASGIApp, *, metrics: HttpMetrics | None, max_body: int, max_url: int
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body
        self.max_url = max_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex.encode()
        if len(scope.get("raw_path") or b"") + len(scope.get("query_string", b"")) > self.max_url:
            if scope["type"] == "http":
                await _send_error(send, 414, "Request URI too long", "shorten the URL", request_id)
            return
        started = time.perf_counter()
        status_holder = [500]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id)]
            await send(message)

        path = scope["path"]
        streamed = path.endswith(STREAMED_BODY_SUFFIXES) or STREAMED_BODY_PATHS.match(path)
        if scope["type"] == "http" and not streamed:
            replay = await self._read_limited_body(scope, receive, send, request_id)
            if replay is None:
                return
            receive = replay
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.metrics is not None and scope["type"] == "http":
                route = route_label(scope)
                self.metrics.requests.labels(scope["method"], route, str(status_holder[0])).inc()
                self.metrics.duration.labels(scope["method"], route).observe(
                    time.perf_counter() - started
                )

    async def _read_limited_body(
        self, scope: Scope, receive: Receive, send: Send, request_id: bytes
    ) -> Receive | None:
        """Read a small body fully (so a too-large one is refused before any work), then replay."""
        declared = _content_length(scope)
        too_large = f"the limit is {self.max_body} bytes"
        if declared is not None and declared > self.max_body:
            await _send_error(send, 413, "Request body too large", too_large, request_id)
            return None
        chunks: list[bytes] = []
        size = 0
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


def _incoming_request_id(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER and _SAFE_REQUEST_ID.match(value):
            return bytes(value)
    return None


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
