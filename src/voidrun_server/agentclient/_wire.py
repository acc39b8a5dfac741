"""One socket to one agent, shared by many concurrent requests.

Two background tasks own the socket. The reader parses frames and files them under their
request's :class:`Channel`; it never waits for a consumer, and a consumer can never fall more
than one flow-control window behind because the agent may not send more than that. The writer
sends queued frames whole: a caller cancelled halfway through ``send`` can never leave half a
frame on the wire and corrupt the connection for every other request.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from voidrun_server.agent.protocol import (
    DATA,
    ERR,
    HEAD,
    HELLO,
    INITIAL_WINDOW,
    MAX_CONCURRENT_REQUESTS,
    PREFIX,
    PROTOCOL_VERSION,
    REQ,
    RES,
    WINDOW,
    FrameTooLarge,
    Header,
    ProtocolError,
    encode_frame,
    is_int,
    parse_header,
    parse_prefix,
)

from ._channel import Channel
from ._errors import (
    AgentConnectionError,
    AgentError,
    AgentProtocolError,
    AgentRequestTooLargeError,
    AgentVersionError,
)

log = logging.getLogger(__name__)

WRITE_BATCH = 1024 * 1024
READ_SIZE = 256 * 1024
FRAME_TIMEOUT = 15.0  # a begun frame must be complete by then (unless the sandbox is frozen)
FRAMES_PER_CHECKPOINT = 64
MAX_ABANDONED = 4096
MAX_WINDOW_INCREMENT = 64 * INITIAL_WINDOW

_BROKEN = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError)


class _Outgoing:
    __slots__ = ("data", "done", "error")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.done = anyio.Event()
        self.error: AgentError | None = None


class Connection:
    def __init__(self, sock: anyio.abc.SocketStream, path: str) -> None:
        self.path = path
        self.agent_version = 0
        self.agent_ops: frozenset[str] = frozenset()
        self._sock = sock
        self._inbuf = bytearray()
        self._outbox: deque[_Outgoing] = deque()
        self._outbox_ready = anyio.Event()
        self._channels: dict[int, Channel] = {}
        self._slots = anyio.Semaphore(MAX_CONCURRENT_REQUESTS)
        self._next_id = 1
        self._failure: AgentError | None = None
        self._goodbye = ""
        self._frozen = False
        # Requests we abandoned before their answer: late frames for them are harmless. Any
        # other frame for an id we are not waiting on is a protocol violation.
        self._abandoned: dict[int, None] = {}
        self.closed = anyio.Event()

    # -- lifecycle -----------------------------------------------------------------------------

    async def handshake(self) -> None:
        """Exchange hellos before the background tasks start; refuse another version."""
        try:
            await self._sock.send(encode_frame({"t": HELLO, "id": 0, "version": PROTOCOL_VERSION}))
            header, _ = await self._read_frame()
        except _BROKEN as exc:
            raise AgentConnectionError(
                f"the agent at {self.path} closed the connection during the handshake"
            ) from exc
        if header["t"] != HELLO:
            raise AgentProtocolError(f"expected hello from the agent, got {header['t']!r}")
        version = header.get("version")
        if version != PROTOCOL_VERSION:
            shown = version if is_int(version) else _short(version)
            raise AgentVersionError(self.path, shown, PROTOCOL_VERSION)
        ops = header.get("ops")
        self.agent_version = PROTOCOL_VERSION
        if isinstance(ops, list):
            self.agent_ops = frozenset(op for op in ops if isinstance(op, str) and len(op) < 64)

    def freeze(self, frozen: bool) -> None:
        """A frozen sandbox cannot finish a frame it started: suspend the frame deadline."""
        self._frozen = frozen

    @property
    def failed(self) -> bool:
        return self._failure is not None

    @property
    def failure(self) -> AgentError | None:
        """Why the connection ended (None while it is alive)."""
        return self._failure

    def fail(self, error: AgentError) -> None:
        """Mark the connection dead and wake everyone waiting on it with ``error``."""
        if self._failure is None:
            self._failure = error
        self.closed.set()
        for channel in self._channels.values():
            channel.on_failure(self._failure)
        self._channels.clear()
        while self._outbox:
            item = self._outbox.popleft()
            item.error = self._failure
            item.done.set()
        self._outbox_ready.set()

    # -- writing -------------------------------------------------------------------------------

    def post(self, header: Header, payload: bytes = b"") -> _Outgoing:
        """Queue a frame without waiting; the writer task sends it whole."""
        if self._failure is not None:
            raise self._failure
        try:
            frame = encode_frame(header, payload)
        except FrameTooLarge as exc:
            raise AgentRequestTooLargeError(str(exc)) from None
        item = _Outgoing(frame)
        self._outbox.append(item)
        self._outbox_ready.set()
        return item

    async def send(self, header: Header, payload: bytes = b"") -> None:
        """Queue a frame and wait until it is handed to the kernel (socket backpressure)."""
        item = self.post(header, payload)
        await item.done.wait()
        if item.error is not None:
            raise item.error

    async def write_loop(self) -> None:
        batch: list[_Outgoing] = []
        try:
            while self._failure is None:
                if not self._outbox:
                    self._outbox_ready = anyio.Event()
                    await self._outbox_ready.wait()
                    continue
                size = 0
                while self._outbox and size < WRITE_BATCH:
                    batch.append(self._outbox.popleft())
                    size += len(batch[-1].data)
                data = batch[0].data if len(batch) == 1 else b"".join(i.data for i in batch)
                await self._sock.send(data)
                for item in batch:
                    item.done.set()
                batch.clear()
        except _BROKEN:
            self.fail(AgentConnectionError(f"lost the connection to the agent at {self.path}"))
        finally:
            for item in batch:
                item.error = self._failure or AgentConnectionError("connection closed")
                item.done.set()

    # -- reading -------------------------------------------------------------------------------

    async def _read_exactly(self, n: int, deadline: float | None = None) -> bytes:
        while len(self._inbuf) < n:
            want = max(READ_SIZE, n - len(self._inbuf))
            if deadline is None:
                self._inbuf += await self._sock.receive(want)
                continue
            with anyio.move_on_after(deadline - anyio.current_time()):
                self._inbuf += await self._sock.receive(want)
                continue
            if not self._frozen:
                raise AgentProtocolError(
                    f"the agent at {self.path} left a frame unfinished for {FRAME_TIMEOUT:g}s"
                )
            deadline = anyio.current_time() + FRAME_TIMEOUT
        data = bytes(self._inbuf[:n])
        del self._inbuf[:n]
        return data

    async def _read_frame(self) -> tuple[Header, bytes]:
        """One frame. A frame, once begun, must be complete within ``FRAME_TIMEOUT`` (an agent
        writes each frame whole), so a stalled half-frame cannot hold the connection forever."""
        try:
            prefix = await self._read_exactly(1)
            deadline = anyio.current_time() + FRAME_TIMEOUT
            try:
                prefix += await self._read_exactly(PREFIX.size - 1, deadline)
                header_len, payload_len = parse_prefix(prefix)
                body = await self._read_exactly(header_len + payload_len, deadline)
            except anyio.EndOfStream:  # agents write whole frames: this one was cut short
                raise ProtocolError("the connection ended inside a frame") from None
            return parse_header(body[:header_len]), body[header_len:]
        except ProtocolError as exc:
            raise AgentProtocolError(
                f"malformed frame from the agent at {self.path}: {exc}"
            ) from None

    async def read_loop(self) -> None:
        """Everything the agent sends is hostile input: whatever goes wrong here ends this
        connection (with the reason) and nothing else."""
        try:
            while True:
                for _ in range(FRAMES_PER_CHECKPOINT):
                    header, payload = await self._read_frame()
                    self._dispatch(header, payload)
                await anyio.lowlevel.checkpoint()  # a flood of small frames must share the loop
        except AgentError as exc:
            self.fail(exc)
        except _BROKEN:
            reason = f": {self._goodbye}" if self._goodbye else ""
            self.fail(
                AgentConnectionError(f"the agent at {self.path} closed the connection{reason}")
            )
        except Exception as exc:  # a bug or a frame we did not foresee: still only this agent
            log.warning("agent connection %s failed", self.path, exc_info=True)
            self.fail(AgentProtocolError(f"unusable frame from the agent: {type(exc).__name__}"))

    def _dispatch(self, header: Header, payload: bytes) -> None:
        kind, sid = header["t"], header["id"]
        if payload and kind != DATA:
            raise AgentProtocolError(f"{kind} frame from the agent carries a payload")
        if sid == 0:
            if kind != ERR:
                raise AgentProtocolError(f"unexpected {kind!r} frame outside a request")
            _check_shape(header)
            self._goodbye = f"{header['code'][:100]}: {header['message'][:500]}"
            return
        channel = self._channels.get(sid)
        if channel is None:
            if sid in self._abandoned:
                return  # a request we abandoned; its late frames are harmless
            raise AgentProtocolError(f"{kind!r} frame for request {sid}, which is not open")
        if kind == WINDOW:
            n = header.get("n")
            if not is_int(n) or not 0 < n <= MAX_WINDOW_INCREMENT:
                raise AgentProtocolError(f"bad window increment {_short(n)}")
            channel.on_window(n)
        elif kind in (HEAD, DATA, RES, ERR):
            _check_shape(header)
            channel.on_frame(header, payload)
            if kind in (RES, ERR):
                del self._channels[sid]
        else:
            raise AgentProtocolError(f"unexpected {kind!r} frame from the agent")

    # -- requests ------------------------------------------------------------------------------

    async def open(self, op: str, args: dict[str, Any]) -> Channel:
        if self._failure is not None:
            raise self._failure
        await self._slots.acquire()
        if self._failure is not None:
            self._slots.release()
            raise self._failure
        sid = self._next_id
        self._next_id += 1
        channel = Channel(self, sid)
        self._channels[sid] = channel
        try:
            self.post({"t": REQ, "id": sid, "op": op, "args": args})
        except BaseException:
            self.release(channel)  # never sent: nothing to cancel
            raise
        return channel

    def release(self, channel: Channel, abandoned: bool = False) -> None:
        self._channels.pop(channel.id, None)
        if abandoned:
            self._abandoned[channel.id] = None
            if len(self._abandoned) > MAX_ABANDONED:
                del self._abandoned[next(iter(self._abandoned))]
        self._slots.release()


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_shape(header: Header) -> None:
    kind = header["t"]
    if kind == DATA:
        ch = header.get("ch")
        if not isinstance(ch, str) or len(ch) > 32 or len(header) > 3:
            raise AgentProtocolError("data frame without a short channel name, or with extras")
    if kind in (HEAD, RES) and not isinstance(header.get("body"), dict):
        raise AgentProtocolError(f"{kind} frame without an object body")
    if kind == ERR and not (
        isinstance(header.get("code"), str) and isinstance(header.get("message"), str)
    ):
        raise AgentProtocolError("err frame without code and message")
