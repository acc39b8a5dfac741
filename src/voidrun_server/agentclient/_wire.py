"""One socket to one agent, shared by many concurrent requests.

The socket is an asyncio transport (uvloop's on the server): the event loop reads it as bytes
arrive, with no per-read registration, and writes go straight to the kernel when it has room.

**Reading.** The transport's protocol (:class:`_Inbound`) only collects bytes (and stops the
transport reading when it holds more than ``READ_LIMIT``, so a peer cannot make the server
buffer without bound). One reader task parses every complete frame in that buffer per wake-up —
no system call, timer or copy per frame beyond the frame's own bytes — and files each under its
request's :class:`Channel`. It never waits for a consumer, and a consumer can never fall more
than one flow-control window behind because the agent may not send more than that. It yields to
the loop every ``FRAMES_PER_CHECKPOINT`` frames, so a flood of small frames shares the loop. A
frame, once begun, must be complete within ``FRAME_TIMEOUT`` (an agent writes whole frames).

**Writing.** ``post`` appends a whole encoded frame to the outbox and schedules one flush at the
end of the current loop iteration; the flush joins everything queued by then (up to
``WRITE_BATCH`` bytes per write) into one ``transport.write`` — so concurrent requests' frames
leave in one system call, in the order they were posted. No frame is ever split between
writes by a cancelled caller: frames are queued whole, synchronously. ``send`` also waits until
its frame is handed to the transport and the transport is not above its high-water mark
(socket backpressure for uploads).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from typing import Any, cast

import anyio
import anyio.abc
import anyio.lowlevel

from voidrun_server.agent.protocol import (
    DATA,
    END,
    ERR,
    HEAD,
    HELLO,
    INITIAL_WINDOW,
    MAX_CONCURRENT_REQUESTS,
    MAX_HEADER_SIZE,
    MAX_PAYLOAD_SIZE,
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

WRITE_BATCH = 1024 * 1024  # at most this much joined into one write
MAX_FRAME = PREFIX.size + MAX_HEADER_SIZE + MAX_PAYLOAD_SIZE
READ_LIMIT = 2 * MAX_FRAME  # unparsed bytes held before the transport stops reading
FRAME_TIMEOUT = 15.0  # a begun frame must be complete by then (unless the sandbox is frozen)
FRAMES_PER_CHECKPOINT = 64
MAX_ABANDONED = 4096
MAX_WINDOW_INCREMENT = 64 * INITIAL_WINDOW

_BROKEN = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError)


class _Inbound(asyncio.Protocol):
    """The transport's protocol: collects what the agent sends and wakes the one reader."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.pos = 0  # bytes of ``buffer`` already parsed
        self.eof = False
        self.lost: BaseException | None = None  # why the transport went away (if it did)
        self.transport: asyncio.Transport | None = None
        self.reading_paused = False
        self.write_paused = False
        self._reader: asyncio.Future[None] | None = None
        self.on_writable: Any = None  # set by the connection: called on resume_writing

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) - self.pos > READ_LIMIT and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.lost = exc or anyio.ClosedResourceError()
        self._wake()
        if self.on_writable is not None:
            self.on_writable()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.on_writable is not None:
            self.on_writable()

    def _wake(self) -> None:
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    async def more(self) -> None:
        """Wait until bytes arrive, the peer closes, or the connection is lost."""
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()
        reader = self._reader = asyncio.get_running_loop().create_future()
        try:
            await reader
        finally:
            self._reader = None

    def compact(self) -> None:
        if self.pos:
            del self.buffer[: self.pos]
            self.pos = 0


class Connection:
    def __init__(self, transport: asyncio.Transport, inbound: _Inbound, path: str) -> None:
        self.path = path
        self.agent_version = 0
        self.agent_ops: frozenset[str] = frozenset()
        self._loop = asyncio.get_running_loop()
        self._transport = transport
        self._in = inbound
        self._in.on_writable = self._writable
        self._outbox: deque[bytes] = deque()
        self._flush_scheduled = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._frame_started: float | None = None  # loop time a pending partial frame began
        self._channels: dict[int, Channel] = {}
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_REQUESTS)
        self._next_id = 1
        self._failure: AgentError | None = None
        self._goodbye = ""
        self._frozen = False
        # Requests we abandoned before their answer: late frames for them are harmless. Any
        # other frame for an id we are not waiting on is a protocol violation.
        self._abandoned: dict[int, None] = {}
        self.closed = anyio.Event()

    @classmethod
    async def attach(cls, sock: socket.socket, path: str) -> Connection:
        """Wrap a connected Unix socket (the connection takes it over)."""
        loop = asyncio.get_running_loop()
        inbound = _Inbound()
        if sock.family == socket.AF_UNIX:
            transport, _ = await loop.create_unix_connection(lambda: inbound, sock=sock)
        else:  # a node's tunnel (``_tunnel.py``)
            transport, _ = await loop.create_connection(lambda: inbound, sock=sock)
        return cls(transport, inbound, path)

    # -- lifecycle -----------------------------------------------------------------------------

    async def handshake(self) -> None:
        """Exchange hellos before the reader starts; refuse another version."""
        try:
            self.post({"t": HELLO, "id": 0, "version": PROTOCOL_VERSION})
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
        self._outbox.clear()
        self._wake_drain_waiters()

    def close(self) -> None:
        """Drop the socket at once (whatever is unsent is discarded)."""
        self._transport.abort()

    # -- writing -------------------------------------------------------------------------------

    def post(self, header: Header, payload: bytes = b"") -> None:
        """Queue a whole frame without waiting; it leaves with the next flush (this loop
        iteration, joined with whatever else was queued meanwhile)."""
        if self._failure is not None:
            raise self._failure
        try:
            frame = encode_frame(header, payload)
        except FrameTooLarge as exc:
            raise AgentRequestTooLargeError(str(exc)) from None
        self._outbox.append(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    async def send(self, header: Header, payload: bytes = b"") -> None:
        """Queue a frame and wait until it is handed to the transport and the transport is
        below its high-water mark (socket backpressure)."""
        self.post(header, payload)
        if self._outbox or self._in.write_paused:
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter
        if self._failure is not None:
            raise self._failure
        if self._in.lost is not None:  # the reader reports why; this frame did not leave
            raise AgentConnectionError(f"lost the connection to the agent at {self.path}")

    def _flush(self) -> None:
        """Write what is queued: in order, whole frames, at most ``WRITE_BATCH`` per write
        (a single larger frame alone), and nothing while the transport is above high water."""
        self._flush_scheduled = False
        outbox = self._outbox
        if self._in.lost is not None or self._transport.is_closing():
            outbox.clear()  # gone: the reader (or ``fail``) says why; senders learn it now
            self._wake_drain_waiters()
            return
        while outbox and not self._in.write_paused and self._failure is None:
            first = outbox.popleft()
            if not outbox or len(first) >= WRITE_BATCH:
                self._transport.write(first)
                continue
            batch = [first]
            size = len(first)
            while outbox and size + len(outbox[0]) <= WRITE_BATCH:
                frame = outbox.popleft()
                batch.append(frame)
                size += len(frame)
            self._transport.write(b"".join(batch))
        if not outbox and not self._in.write_paused:
            self._wake_drain_waiters()

    def _writable(self) -> None:
        """The transport drained below its low-water mark, or went away."""
        self._flush()

    def _wake_drain_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- reading -------------------------------------------------------------------------------

    def _buffered_frame(self) -> tuple[Header, bytes] | None:
        """The next complete frame in the buffer, or None. Sizes are checked as soon as a
        prefix is complete, before anything more of the frame is waited for."""
        inbound = self._in
        buf, pos = inbound.buffer, inbound.pos
        if len(buf) - pos < PREFIX.size:
            return None
        header_len, payload_len = parse_prefix(bytes(buf[pos : pos + PREFIX.size]))
        start = pos + PREFIX.size
        end = start + header_len + payload_len
        if len(buf) < end:
            return None
        with memoryview(buf) as view:
            header = parse_header(bytes(view[start : start + header_len]))
            payload = bytes(view[start + header_len : end]) if payload_len else b""
        inbound.pos = end
        return header, payload

    async def _read_frame(self) -> tuple[Header, bytes]:
        """One frame. A frame, once begun, must be complete within ``FRAME_TIMEOUT`` (an agent
        writes each frame whole), so a stalled half-frame cannot hold the connection forever."""
        inbound = self._in
        try:
            while True:
                frame = self._buffered_frame()
                if frame is not None:
                    self._frame_started = None
                    return frame
                inbound.compact()
                pending = len(inbound.buffer) > 0
                if inbound.eof:
                    if pending:  # agents write whole frames: this one was cut short
                        raise ProtocolError("the connection ended inside a frame")
                    if isinstance(inbound.lost, OSError):
                        raise inbound.lost
                    raise anyio.EndOfStream
                if not pending:
                    self._frame_started = None
                    await inbound.more()
                    continue
                now = self._loop.time()
                if self._frame_started is None:
                    self._frame_started = now
                remaining = self._frame_started + FRAME_TIMEOUT - now
                if remaining <= 0:
                    if not self._frozen:
                        raise AgentProtocolError(
                            f"the agent at {self.path} left a frame unfinished"
                            f" for {FRAME_TIMEOUT:g}s"
                        )
                    self._frame_started = now
                    remaining = FRAME_TIMEOUT
                with anyio.move_on_after(remaining):
                    await inbound.more()
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
        elif kind in (HEAD, DATA, END, RES, ERR):
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
