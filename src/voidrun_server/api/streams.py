"""Long-lived responses that end when their API key is revoked (``services/streams.py``).

* :class:`GuardedStreamingResponse` — SSE and NDJSON bodies. The whole ASGI response runs in
  the key's cancel scope (a plain coroutine, never a cancel scope inside an async generator);
  when revocation cancels it, the response is completed with one final chunk (an SSE ``error``
  event, an NDJSON ``error`` line) so the client sees why it ended. It also releases what it
  streams from even if the response never started (the agent stream is opened before the
  response, so that its errors are JSON).
* :func:`close_revoked` — WebSockets: close code 1008 (policy violation) with the reason.
* Long polls run their wait inside ``guard`` and answer 401 when it was cancelled.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio
from fastapi import Depends
from fastapi.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketState

from ..services.accounts import Principal
from ..services.streams import REVOKED_REASON, StreamRegistry
from .deps import Ctx

POLICY_VIOLATION = 1008
CLOSE_LIMIT = 5.0


async def stream_registry(ctx: Ctx) -> StreamRegistry:
    return ctx.streams


Streams = Annotated[StreamRegistry, Depends(stream_registry)]


class GuardedStreamingResponse(StreamingResponse):
    def __init__(
        self,
        content: AsyncIterator[bytes],
        *,
        streams: StreamRegistry,
        key_id: str,
        final: bytes,
        release: Callable[[], Awaitable[Any]] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(content, **kw)
        self._streams = streams
        self._key_id = key_id
        self._final = final
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            with self._streams.guard(self._key_id) as guard:
                await super().__call__(scope, receive, tracking_send)
            if guard.cancelled_caught:
                with anyio.move_on_after(CLOSE_LIMIT, shield=True):
                    await self._finish(send, started)
        finally:
            if self._release is not None:
                with anyio.CancelScope(shield=True):
                    await self._release()

    async def _finish(self, send: Send, started: bool) -> None:
        try:
            if not started:
                start = {"status": self.status_code, "headers": self.raw_headers}
                await send({"type": "http.response.start", **start})
            await send({"type": "http.response.body", "body": self._final, "more_body": False})
        except OSError:
            pass  # the client left at the same moment


@asynccontextmanager
async def revocable(
    websocket: WebSocket, streams: StreamRegistry, caller: Principal
) -> AsyncIterator[None]:
    """Run a WebSocket route's body; if its key is revoked meanwhile, close with 1008."""
    with streams.guard(caller.key_id) as guard:
        yield
    if guard.cancelled_caught:
        await close_revoked(websocket)


async def close_revoked(websocket: WebSocket) -> None:
    """Close a WebSocket whose key was revoked: 1008 and the reason."""
    if websocket.application_state == WebSocketState.DISCONNECTED:
        return
    with anyio.move_on_after(CLOSE_LIMIT, shield=True):
        try:
            await websocket.close(POLICY_VIOLATION, REVOKED_REASON)
        except (RuntimeError, OSError):
            pass  # the client left first


__all__ = ["REVOKED_REASON", "GuardedStreamingResponse", "Streams", "close_revoked", "revocable"]
