"""The client side of one request on an agent connection (see ``_wire``)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from voidrun_server.agent.protocol import (
    CANCEL,
    DATA,
    END,
    ERR,
    FRAME_COST,
    HEAD,
    INITIAL_WINDOW,
    MAX_PAYLOAD_SIZE,
    RES,
    WINDOW,
    Header,
    data_cost,
)

from ._errors import (
    AgentConnectionError,
    AgentError,
    AgentOperationError,
    AgentProtocolError,
    AgentRequestFinished,
)

if TYPE_CHECKING:
    from ._wire import Connection


class Channel:
    """The client side of one request: its frames, its flow-control credit, its slot."""

    def __init__(self, conn: Connection, sid: int) -> None:
        self.id = sid
        self._conn = conn
        self._frames: deque[tuple[Header, bytes]] = deque()
        self._waiter: asyncio.Future[None] | None = None  # the consumer, while it waits
        # The sender waiting for credit: its own future, so a request that uploads and
        # downloads at once (port.connect) can have one task in each direction.
        self._send_waiter: asyncio.Future[None] | None = None
        self._failure: AgentError | None = None
        self._answered = False  # res/err arrived
        self._closed = False  # slot given back
        self._send_credit = INITIAL_WINDOW
        self._recv_allowed = INITIAL_WINDOW
        self._recv_unacked = 0
        self._got_head = False
        self._got_data = False
        self.peer_ended = False  # the agent sent ``end`` (port.connect): no more data

    # -- called by the reader ------------------------------------------------------------------

    def on_frame(self, header: Header, payload: bytes) -> None:
        kind = header["t"]
        if self.peer_ended and kind in (DATA, HEAD, END):
            raise AgentProtocolError(f"{kind} frame after end on request {self.id}")
        if kind == END:
            self.peer_ended = True
        elif kind == DATA:
            cost = data_cost(len(payload))
            if cost > self._recv_allowed:
                raise AgentProtocolError(f"agent overran the window on request {self.id}")
            self._recv_allowed -= cost
            self._got_data = True
        elif kind == HEAD:
            if self._got_head or self._got_data:
                raise AgentProtocolError(f"second or late head frame on request {self.id}")
            self._got_head = True
        else:
            self._answered = True
        self._frames.append((header, payload))
        self._wake()

    def on_window(self, n: int) -> None:
        self._send_credit += n
        self._wake()

    def on_failure(self, error: AgentError) -> None:
        self._failure = error
        self._wake()

    def _wake(self) -> None:
        for waiter in (self._waiter, self._send_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def _wait(self) -> None:
        # One consumer per channel, and nothing awaits between its check and this wait. A
        # plain future: an anyio.Event per wait costs ~4 µs here, a future ~0.3 µs.
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    async def _wait_credit(self) -> None:
        waiter = self._send_waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._send_waiter = None

    # -- used by the client --------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self._closed

    async def receive(self) -> tuple[Header, bytes]:
        """Next frame of this request; an ``err`` frame raises :class:`AgentOperationError`."""
        while not self._frames:
            if self._failure is not None:
                raise self._failure
            if self._closed:
                raise AgentConnectionError("request already finished")
            await self._wait()
        header, payload = self._frames.popleft()
        kind = header["t"]
        if kind == DATA and not self._answered:
            self._recv_unacked += data_cost(len(payload))
            if self._recv_unacked >= INITIAL_WINDOW // 2:
                grant, self._recv_unacked = self._recv_unacked, 0
                self._recv_allowed += grant
                self._conn.post({"t": WINDOW, "id": self.id, "n": grant})
        elif kind in (RES, ERR):
            self.close()
            if kind == ERR:
                raise AgentOperationError(header["code"], header["message"])
        return header, payload

    async def send_data(
        self, data: bytes | bytearray | memoryview, *, reader_elsewhere: bool = False
    ) -> None:
        """Send ``data`` as the window allows. An answer that arrives meanwhile is read here
        (its error raised), unless ``reader_elsewhere`` (another task reads this request's
        frames): then :class:`AgentRequestFinished` is raised and the reader sees the answer."""
        view = memoryview(data).cast("B")
        while view:
            while self._send_credit <= FRAME_COST or self._answered:
                if self._failure is not None:
                    raise self._failure
                if self._answered and reader_elsewhere:
                    raise AgentRequestFinished(f"request {self.id} has finished")
                if self._answered:
                    await self._early_answer()
                await self._wait_credit()
            n = min(self._send_credit - FRAME_COST, MAX_PAYLOAD_SIZE, len(view))
            self._send_credit -= data_cost(n)
            await self._conn.send({"t": DATA, "id": self.id}, bytes(view[:n]))
            view = view[n:]

    async def send_end(self) -> None:
        await self._conn.send({"t": END, "id": self.id})

    async def _early_answer(self) -> None:
        """The agent answered while we were still uploading: surface its error."""
        while True:
            header, _ = await self.receive()  # raises on err
            if header["t"] == RES:
                raise AgentProtocolError(f"agent finished request {self.id} before its upload")

    def close(self) -> None:
        """Give the slot back; if the agent has not answered, tell it to abandon the request."""
        if self._closed:
            return
        self._closed = True
        abandoned = not self._answered and self._failure is None
        if abandoned:
            try:
                self._conn.post({"t": CANCEL, "id": self.id})
            except AgentError:
                pass
        self._conn.release(self, abandoned)
