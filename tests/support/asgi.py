"""Driving an ASGI app by hand, to end a request exactly where a test wants it to end.

``exchange`` plays one HTTP or WebSocket client: it can hang up before the first byte of the
response, after some body chunks, or never; and ``cancel_when`` cancels the whole request the
way a server shutting down does. :class:`Ledger` is a resource that records when it is entered
and released (its release awaits, so an unshielded release under cancellation would stop
half-way and show up as never released).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from starlette.types import ASGIApp, Message

T = TypeVar("T")
LIMIT = 10.0  # no exchange here takes longer than this, unless the code under test hangs


@dataclass
class Ledger:
    entered: int = 0
    released: int = 0
    log: list[str] = field(default_factory=list)
    held: anyio.Event = field(default_factory=anyio.Event)

    @asynccontextmanager
    async def hold(self, value: T) -> AsyncIterator[T]:
        self.entered += 1
        self.log.append("entered")
        self.held.set()
        try:
            yield value
        finally:
            await anyio.sleep(0.01)  # a checkpoint: cancellation would stop here if unshielded
            self.released += 1
            self.log.append("released")

    @property
    def balanced(self) -> bool:
        return self.entered > 0 and self.released == self.entered


@dataclass
class Exchange:
    sent: list[Message] = field(default_factory=list)
    error: BaseException | None = None
    first_body: anyio.Event = field(default_factory=anyio.Event)

    @property
    def status(self) -> int | None:
        for message in self.sent:
            if message["type"] == "http.response.start":
                return int(message["status"])
        return None

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")

    @property
    def completed(self) -> bool:
        return any(
            m["type"] == "http.response.body" and not m.get("more_body", False) for m in self.sent
        )

    def closed_with(self) -> int | None:
        for message in self.sent:
            if message["type"] == "websocket.close":
                return int(message.get("code", 1000))
        return None


async def exchange(
    app: ASGIApp,
    path: str,
    *,
    method: str = "POST",
    payload: Any = None,
    websocket: bool = False,
    leave_after: int | None = None,
    spec_version: str = "2.3",
    during: Callable[[Exchange], Awaitable[None]] | None = None,
    cancel: bool = False,
) -> Exchange:
    """One request. ``leave_after``: the client hangs up once it got that many non-empty body
    chunks (0: before the first byte; None: it stays to the end). With ASGI 2.4 a send after
    the client left raises ``OSError``, as uvicorn's would; before 2.4 the app learns it from
    ``receive``. ``during(exchange so far)`` runs alongside (to revoke a key, say); with ``cancel``,
    the request is cancelled from outside once it returns, as a server shutting down cancels
    the requests still running."""
    result = Exchange()
    gone = anyio.Event()
    if leave_after == 0:
        gone.set()
    request_sent = False
    raw = b"" if payload is None else json.dumps(payload).encode()
    chunks = 0

    async def receive() -> Message:
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            if websocket:
                return {"type": "websocket.connect"}
            return {"type": "http.request", "body": raw, "more_body": False}
        await gone.wait()
        return (
            {"type": "websocket.disconnect", "code": 1001}
            if websocket
            else {"type": "http.disconnect"}
        )

    async def send(message: Message) -> None:
        nonlocal chunks
        if gone.is_set() and spec_version >= "2.4":
            raise OSError("the client left")
        result.sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            chunks += 1
            result.first_body.set()
            if leave_after is not None and chunks >= leave_after:
                gone.set()

    scope: dict[str, Any] = {
        "type": "websocket" if websocket else "http",
        "asgi": {"version": "3.0", "spec_version": spec_version},
        "http_version": "1.1",
        "method": method,
        "scheme": "ws" if websocket else "http",
        "path": path.split("?")[0],
        "raw_path": path.split("?")[0].encode(),
        "query_string": path.partition("?")[2].encode(),
        "root_path": "",
        "headers": [(b"host", b"test"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
        "state": {},
    }

    with anyio.fail_after(LIMIT):  # a hung exchange fails the test with TimeoutError
        async with anyio.create_task_group() as tasks:

            async def run() -> None:
                try:
                    await app(scope, receive, send)
                except Exception as exc:  # noqa: BLE001 - the test looks at it
                    result.error = exc
                tasks.cancel_scope.cancel()  # over: stop ``during``

            async def alongside(during: Callable[[Exchange], Awaitable[None]]) -> None:
                await during(result)
                if cancel:
                    tasks.cancel_scope.cancel()

            tasks.start_soon(run)
            if during is not None:
                tasks.start_soon(alongside, during)
    return result
