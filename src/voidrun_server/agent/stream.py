"""One request's side of a connection: what an op handler sees.

A handler sends ``head``/``data`` frames through its :class:`Stream` and receives the client's
uploaded chunks from it. Both directions are credit-based (see ``protocol``; a data frame costs
its payload plus ``FRAME_COST``): ``send_data`` waits until the client has granted room, and the
client may never send more than the window this stream granted, so neither side buffers more
than one window per request.
"""

from __future__ import annotations

from .protocol import (
    DATA,
    END,
    FRAME_COST,
    HEAD,
    INITIAL_WINDOW,
    MAX_PAYLOAD_SIZE,
    WINDOW,
    ProtocolError,
    data_cost,
)
from .sync import Event

TYPE_CHECKING = False  # typing is not imported at run time (agent start-up cost)
if TYPE_CHECKING:
    from collections import deque
    from typing import Any, Awaitable, Callable, Deque, Dict, Mapping, Optional, Protocol, Union

    from .context import AgentContext

    class FrameSink(Protocol):
        """Where a stream's frames go: the connection, seen only through this method."""

        async def send(self, header: Mapping[str, Any], payload: bytes = b"") -> None: ...

    # What every op is: the context, its stream, its args -> the result body.
    Handler = Callable[[AgentContext, "Stream", Dict[str, Any]], Awaitable[Dict[str, Any]]]
else:
    from _collections import deque


class Stream:
    def __init__(self, conn: FrameSink, sid: int) -> None:
        self.id = sid
        self._conn = conn
        self._send_credit = INITIAL_WINDOW
        self._credit_changed = Event()
        self._inbox: Deque[bytes] = deque()
        self._inbox_changed = Event()
        self._ended = False
        self._recv_allowed = INITIAL_WINDOW
        self._recv_unacked = 0

    # -- called by the connection's reader; never blocks ------------------------------------

    def on_window(self, n: int) -> None:
        self._send_credit += n
        self._credit_changed.set()

    def on_data(self, payload: bytes) -> None:
        if self._ended:
            raise ProtocolError(f"data after end on request {self.id}")
        cost = data_cost(len(payload))
        if cost > self._recv_allowed:
            raise ProtocolError(f"client overran the flow-control window on request {self.id}")
        self._recv_allowed -= cost
        if payload:  # an empty frame only costs the sender window; there is nothing to keep
            self._inbox.append(payload)
            self._inbox_changed.set()

    def on_end(self) -> None:
        self._ended = True
        self._inbox_changed.set()

    # -- used by op handlers -----------------------------------------------------------------

    async def send_head(self, body: Dict[str, Any]) -> None:
        await self._conn.send({"t": HEAD, "id": self.id, "body": body})

    async def send_end(self) -> None:
        """No more data from this side (the request goes on: a half-close)."""
        await self._conn.send({"t": END, "id": self.id})

    async def wait_credit(self) -> int:
        """Wait until the client can take more data; return how much one frame may carry.

        Readers call this *before* pulling bytes from their source, so bytes are only taken
        from a pipe or file when they can be sent: backpressure reaches the producer.
        """
        while self._send_credit <= FRAME_COST:
            self._credit_changed.clear()
            await self._credit_changed.wait()
        return min(self._send_credit - FRAME_COST, MAX_PAYLOAD_SIZE)

    async def send_data(self, channel: str, data: Union[bytes, bytearray]) -> None:
        view = memoryview(data)
        while view:
            n = min(await self.wait_credit(), len(view))
            self._send_credit -= data_cost(n)
            await self._conn.send({"t": DATA, "id": self.id, "ch": channel}, bytes(view[:n]))
            view = view[n:]

    async def receive(self) -> Optional[bytes]:
        """Next uploaded chunk, or None once the client sent ``end``."""
        while not self._inbox:
            if self._ended:
                return None
            self._inbox_changed.clear()
            await self._inbox_changed.wait()
        chunk = self._inbox.popleft()
        self._recv_unacked += data_cost(len(chunk))
        # Grant in half-window steps: fewer frames, and the client never stalls on an empty pipe.
        if self._recv_unacked >= INITIAL_WINDOW // 2:
            grant, self._recv_unacked = self._recv_unacked, 0
            self._recv_allowed += grant
            await self._conn.send({"t": WINDOW, "id": self.id, "n": grant})
        return chunk
