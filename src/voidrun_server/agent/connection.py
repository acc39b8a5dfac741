"""One client connection: the multiplexer between its socket and its requests.

Reading happens in the loop's callback for the socket: it only parses frames and hands them to
request streams, never waiting for a request, so a request waiting for credit (or a disk) cannot
stop frames for the others. Each request runs as its own task. Frames to send are queued whole
(so they never interleave) and written at the end of the loop round with one ``writev`` for
everything queued; a sender waits while more than ``HIGH_WATER`` bytes are queued (the socket's
backpressure). Anything malformed closes this connection only.
"""

from __future__ import annotations

from . import log
from .fdio import Fd
from .futures import CancelledError, Future
from .loop import get_loop
from .ops import OPS, lookup
from .protocol import (
    CANCEL,
    DATA,
    END,
    ERR,
    HELLO,
    INTERNAL,
    MAX_CONCURRENT_REQUESTS,
    PREFIX,
    PROTOCOL_ERROR,
    PROTOCOL_VERSION,
    REQ,
    RES,
    VERSION_MISMATCH,
    WINDOW,
    OpError,
    ProtocolError,
    encode_frame,
    encode_head,
    is_int,
    parse_header,
    parse_prefix,
)
from .stream import Stream
from .sync import Event
from .tasks import Task, wait

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Mapping

    from .context import AgentContext
    from .protocol import Header
    from .stream import Handler

HANDSHAKE_TIMEOUT = 10.0
GOODBYE_TIMEOUT = 1.0
READ_SIZE = 256 * 1024
READS_PER_ROUND = 4  # then other work gets a turn
HIGH_WATER = 64 * 1024  # asyncio's defaults for a transport's write buffer
LOW_WATER = 16 * 1024
IOV_MAX = 1024


class VersionMismatch(ProtocolError):
    pass


class Connection:
    def __init__(
        self, ctx: AgentContext, fd: int, *, rehello: bool = False, inbox: bytes = b""
    ) -> None:
        """``rehello``: a hello after the handshake ends this session and leaves the bytes from
        that frame on in ``leftover`` (a serial port's host reconnected without the agent
        seeing the gap, ``serial.py``); otherwise it is a protocol error. ``inbox``: bytes
        already read for this session."""
        self._ctx = ctx
        self._rehello = rehello
        self.leftover = b""
        self._loop = get_loop()
        self._sock = Fd(fd, write=True, on_readable=self._readable, on_writable=self._flush)
        self._inbox = bytearray(inbox)
        self._outbox: list[bytes | memoryview] = []
        self._queued = 0  # bytes in _outbox
        self._flush_pending = False
        self._drained = Event()
        self._drained.set()
        # Open requests by id. A request leaves this map *before* its final frame is sent, or
        # when its cancel frame arrives, so the agent never counts more open requests than the
        # client does (the client frees a slot on seeing the final frame or sending cancel).
        self._requests: dict[int, tuple[Stream, Task[None]]] = {}
        # Every handler task, including cancelled ones still cleaning up.
        self._tasks: set[Task[None]] = set()
        self._greeted = False
        self._closed = False  # no more frames out
        self._ended: Future[ProtocolError | None] = Future()  # None: the client left
        # A client that never says hello is dropped (the old asyncio.wait_for on the handshake).
        self._handshake_timer = self._loop.call_later(HANDSHAKE_TIMEOUT, self._end, None)

    async def send(self, header: Mapping[str, Any], payload: bytes = b"") -> None:
        if self._closed:
            raise ConnectionResetError("connection closed")
        self._queue(encode_head(header, len(payload)), payload)
        while self._queued > HIGH_WATER and not self._closed:
            self._drained.clear()
            await self._drained.wait()
        if self._closed:
            raise ConnectionResetError("connection closed")

    async def serve(self) -> None:
        try:
            if self._inbox:
                try:
                    self._take_frames()
                except ProtocolError as exc:
                    self._end(exc)
            self._readable()
            error = await self._ended
            if error is not None:
                log.warning("closing a connection: %s", error)
                code = VERSION_MISMATCH if isinstance(error, VersionMismatch) else PROTOCOL_ERROR
                await self._goodbye(code, str(error))
        finally:
            self._handshake_timer.cancel()
            await self._close()

    # -- reading -------------------------------------------------------------------------------

    def _readable(self) -> None:
        for _ in range(READS_PER_ROUND):
            if self._ended.done():
                return
            try:
                data = self._sock.read(READ_SIZE)
            except OSError:  # ECONNRESET: the client went away
                data = b""
            if data is None:
                return  # drained; the next edge calls us again
            if not data:
                self._end(None)
                return
            self._inbox += data
            try:
                self._take_frames()
            except ProtocolError as exc:
                self._end(exc)
                return
        self._loop.call_soon(self._readable)  # more may be waiting; let others run first

    def _take_frames(self) -> None:
        buf = self._inbox
        pos = 0
        try:
            while len(buf) - pos >= PREFIX.size and not self._ended.done():
                header_len, payload_len = parse_prefix(bytes(buf[pos : pos + PREFIX.size]))
                start = pos + PREFIX.size
                end = start + header_len + payload_len
                if len(buf) < end:
                    break
                header = parse_header(bytes(buf[start : start + header_len]))
                if self._rehello and self._greeted and header["t"] == HELLO:
                    self.leftover = bytes(buf[pos:])  # the next session starts here
                    pos = len(buf)
                    self._outbox.clear()  # nothing of this session may reach the next client
                    self._queued = 0
                    self._closed = True
                    self._drained.set()
                    self._end(None)
                    break
                payload = bytes(buf[start + header_len : end])
                pos = end
                self._frame(header, payload)
        finally:
            del buf[:pos]

    def _frame(self, header: Header, payload: bytes) -> None:
        if self._greeted:
            self._dispatch(header, payload)
            return
        if header["t"] != HELLO:
            raise ProtocolError(f"expected a hello frame first, got {header['t']!r}")
        self._greeted = True
        self._handshake_timer.cancel()
        # Answer before judging, so a client of another version can report what it found.
        hello = {"t": HELLO, "id": 0, "version": PROTOCOL_VERSION, "ops": sorted(OPS)}
        self._queue(encode_frame(hello))
        if header.get("version") != PROTOCOL_VERSION:
            raise VersionMismatch(
                f"client speaks protocol version {header.get('version')!r},"
                f" this agent speaks {PROTOCOL_VERSION}"
            )

    def _dispatch(self, header: Header, payload: bytes) -> None:
        kind, sid = header["t"], header["id"]
        if payload and kind != DATA:
            raise ProtocolError(f"{kind} frame carries a payload")
        if kind == REQ:
            self._start(sid, header)
            return
        if kind not in (DATA, END, WINDOW, CANCEL):
            raise ProtocolError(f"unexpected {kind} frame from a client")
        entry = self._requests.get(sid)
        if entry is None:
            return  # the request already finished; frames in flight are harmless
        stream, task = entry
        if kind == DATA:
            stream.on_data(payload)
        elif kind == END:
            stream.on_end()
        elif kind == WINDOW:
            n = header.get("n")
            if not is_int(n) or n <= 0:
                raise ProtocolError(f"bad window increment {n!r}")
            stream.on_window(n)
        else:
            task.cancel()
            self._forget(stream)

    def _end(self, error: ProtocolError | None) -> None:
        if not self._ended.done():
            self._ended.set_result(error)

    # -- requests ------------------------------------------------------------------------------

    def _start(self, sid: int, header: Header) -> None:
        if sid == 0 or sid in self._requests:
            raise ProtocolError(f"request id {sid} is 0 or already in use")
        if len(self._requests) >= MAX_CONCURRENT_REQUESTS:
            raise ProtocolError(f"more than {MAX_CONCURRENT_REQUESTS} concurrent requests")
        op, args = header.get("op"), header.get("args", {})
        handler = lookup(op, args)
        stream = Stream(self, sid)
        task = Task(self._run(stream, handler, args, op))
        self._requests[sid] = (stream, task)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, stream: Stream, handler: Handler, args: Any, op: object) -> None:
        try:
            try:
                body = await handler(self._ctx, stream, args)
            except OpError as exc:
                final = {"t": ERR, "id": stream.id, "code": exc.code, "message": exc.message}
            except (ConnectionError, CancelledError):
                raise
            except Exception as exc:
                log.exception("op %r failed", op)
                message = f"{type(exc).__name__}: {exc}"
                final = {"t": ERR, "id": stream.id, "code": INTERNAL, "message": message}
            else:
                final = {"t": RES, "id": stream.id, "body": body}
            self._forget(stream)
            await self.send(final)
        except ConnectionError:
            pass
        finally:
            self._forget(stream)

    def _forget(self, stream: Stream) -> None:
        entry = self._requests.get(stream.id)
        if entry is not None and entry[0] is stream:
            del self._requests[stream.id]

    # -- writing -------------------------------------------------------------------------------

    def _queue(self, *parts: bytes) -> None:
        if self._closed:  # a session that ended (or was handed over) sends nothing more
            return
        for part in parts:
            if part:
                self._outbox.append(part)
                self._queued += len(part)
        if not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        while self._outbox and self._sock.writable and not self._sock.closed:
            try:
                written = self._sock.writev(self._outbox[:IOV_MAX])
            except OSError:  # EPIPE, ECONNRESET: the client is gone
                self._outbox.clear()
                self._queued = 0
                self._closed = True
                self._end(None)
                break
            self._queued -= written
            done = 0
            for part in self._outbox:
                if written < len(part):
                    break
                written -= len(part)
                done += 1
            del self._outbox[:done]
            if written:
                self._outbox[0] = memoryview(self._outbox[0])[written:]
        if self._queued <= LOW_WATER or self._closed:
            self._drained.set()

    async def _goodbye(self, code: str, message: str) -> None:
        """Tell the client why it is being dropped; best effort, it may not be reading."""
        if self._closed:
            return
        self._queue(encode_frame({"t": ERR, "id": 0, "code": code, "message": message}))
        deadline = self._loop.time() + GOODBYE_TIMEOUT
        while self._outbox and not self._closed:
            self._drained.clear()
            if not await self._drained.wait(deadline - self._loop.time()):
                break

    async def _close(self) -> None:
        self._closed = True
        self._drained.set()  # senders waiting for room get ConnectionResetError
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()  # kills their processes, removes their temp files
        try:
            if tasks:
                await wait(tasks)
        finally:
            self._sock.close()
