"""The one owner of what a route keeps open past its handler, and of how revocation ends it.

A streamed response (SSE, NDJSON, a file download; later a proxied port) goes on reading from
something its handler opened: an agent stream, a file read. A WebSocket route bridges one.
:class:`StreamOwner` (the ``Owner`` dependency) owns all of them:

1. The handler enters each resource with ``await owner.enter(cm)`` before it returns, so what
   the resource refuses (unknown pid, bad cwd, missing file) is an ordinary JSON error.
2. ``owner.respond(body, caller, final=...)`` builds the response. Its body starts only after
   everything was entered; it runs inside the key's revocation scope (``services/streams.py``)
   and, when the key is revoked, ends with ``final`` (an SSE event, an NDJSON line), or is cut
   off when there is none (a download, whose length is fixed). When the response ends, its body
   iterator is closed first, so the body's own ``finally`` blocks run before what they read
   from goes away. WebSocket routes run inside ``owner.revocable(websocket, caller)``, which
   closes them with 1008 on revocation.
3. The owner is a request-scoped dependency: FastAPI leaves it after the response has ended,
   however it ended (body finished or failed, client gone before the first byte or mid-body,
   handler failed after entering, the request task cancelled at shutdown), and it then releases
   everything, shielded from cancellation (FastAPI shields the exits of yield dependencies as
   well), giving up after ``RELEASE_LIMIT``.

Long polls run their wait inside ``StreamRegistry.guard`` and answer 401 when it was cancelled.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends
from fastapi.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketState

from ..services.accounts import Principal
from ..services.streams import REVOKED_REASON, StreamRegistry
from .deps import Ctx

log = logging.getLogger(__name__)
T = TypeVar("T")
POLICY_VIOLATION = 1008
CLOSE_LIMIT = 5.0  # sending the last words to a client that may be gone
RELEASE_LIMIT = 10.0  # closing what a stream read from


class OwnedStreamingResponse(StreamingResponse):
    """A streamed body that ends with ``final`` (or is cut, without one) when its key is
    revoked, and closes its body iterator however it ends. Built by :meth:`StreamOwner.respond`;
    the resources it reads from are released by the owner afterwards."""

    def __init__(
        self,
        body: AsyncIterable[bytes],
        *,
        streams: StreamRegistry,
        key_id: str,
        final: bytes | None,
        **kw: Any,
    ) -> None:
        super().__init__(body, **kw)
        self._streams = streams
        self._key_id = key_id
        self._final = final

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
            if guard.cancelled_caught and self._final is not None:
                with anyio.move_on_after(CLOSE_LIMIT, shield=True):
                    await self._finish(send, started, self._final)
        finally:
            with anyio.move_on_after(CLOSE_LIMIT, shield=True):
                await _close(self.body_iterator)

    async def _finish(self, send: Send, started: bool, final: bytes) -> None:
        try:
            if not started:
                start = {"status": self.status_code, "headers": self.raw_headers}
                await send({"type": "http.response.start", **start})
            await send({"type": "http.response.body", "body": final, "more_body": False})
        except OSError:
            pass  # the client left at the same moment


async def _close(body: AsyncIterable[Any]) -> None:
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        await aclose()


class StreamOwner:
    """What one request holds open beyond its handler (see the module doc)."""

    def __init__(self, streams: StreamRegistry) -> None:
        self._streams = streams
        self._stack = AsyncExitStack()

    async def enter(self, resource: AbstractAsyncContextManager[T]) -> T:
        """Enter ``resource`` now (its errors are the route's errors); it is left after the
        response has ended."""
        return await self._stack.enter_async_context(resource)

    def respond(
        self,
        body: AsyncIterable[bytes],
        caller: Principal,
        *,
        final: bytes | None,
        media_type: str,
        headers: Mapping[str, str] | None = None,
        status_code: int = 200,
    ) -> OwnedStreamingResponse:
        """Stream ``body`` (reading from what was entered); ``final`` ends it when ``caller``'s
        key is revoked meanwhile, and None cuts it off instead."""
        return OwnedStreamingResponse(
            body,
            streams=self._streams,
            key_id=caller.key_id,
            final=final,
            media_type=media_type,
            headers=headers,
            status_code=status_code,
        )

    @asynccontextmanager
    async def revocable(self, websocket: WebSocket, caller: Principal) -> AsyncIterator[None]:
        """Run a WebSocket route's body; if its key is revoked meanwhile, close with 1008."""
        with self._streams.guard(caller.key_id) as guard:
            yield
        if guard.cancelled_caught:
            await close_revoked(websocket)

    async def release(self) -> None:
        """Leave everything entered, in reverse order; shielded, at most ``RELEASE_LIMIT``."""
        with anyio.move_on_after(RELEASE_LIMIT, shield=True) as limit:
            try:
                await self._stack.aclose()
            except Exception:  # noqa: BLE001 - the response is over; nobody else can report it
                log.exception("releasing a stream's resources failed")
        if limit.cancelled_caught:
            log.warning("releasing a stream's resources took over %gs", RELEASE_LIMIT)


async def stream_owner(ctx: Ctx) -> AsyncIterator[StreamOwner]:
    owner = StreamOwner(ctx.streams)
    try:
        yield owner
    finally:
        await owner.release()


async def stream_registry(ctx: Ctx) -> StreamRegistry:
    return ctx.streams


# scope="request": FastAPI leaves the owner after the response (or the WebSocket) has ended.
Owner = Annotated[StreamOwner, Depends(stream_owner, scope="request")]
Streams = Annotated[StreamRegistry, Depends(stream_registry)]


async def close_revoked(websocket: WebSocket) -> None:
    """Close a WebSocket whose key was revoked: 1008 and the reason."""
    if websocket.application_state == WebSocketState.DISCONNECTED:
        return
    with anyio.move_on_after(CLOSE_LIMIT, shield=True):
        try:
            await websocket.close(POLICY_VIOLATION, REVOKED_REASON)
        except (RuntimeError, OSError):
            pass  # the client left first


__all__ = [
    "REVOKED_REASON",
    "Owner",
    "OwnedStreamingResponse",
    "StreamOwner",
    "Streams",
    "close_revoked",
]
