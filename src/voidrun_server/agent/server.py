"""The Unix socket listener and the per-connection multiplexer.

Each connection has one reader loop that only parses frames and hands them to request streams;
it never awaits a request, so a request waiting for credit (or a disk) cannot stop frames for
the others. Each request runs as its own task, and all writes go through one lock so frames
never interleave. Anything malformed closes that connection only; the listener keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import stat
from typing import Any, Dict, Mapping, Set, Tuple

from .context import AgentContext
from .ops import OPS
from .process import kill_group
from .protocol import (
    BAD_REQUEST,
    CANCEL,
    DATA,
    END,
    ERR,
    HELLO,
    INTERNAL,
    MAX_CONCURRENT_REQUESTS,
    MAX_HEADER_SIZE,
    MAX_PAYLOAD_SIZE,
    PREFIX,
    PROTOCOL_ERROR,
    PROTOCOL_VERSION,
    REQ,
    RES,
    UNKNOWN_OP,
    VERSION_MISMATCH,
    WINDOW,
    Header,
    OpError,
    ProtocolError,
    encode_frame,
    is_int,
    parse_header,
    parse_prefix,
)
from .reaper import Reaper
from .stream import Handler, Stream

log = logging.getLogger("voidrun_agent")

HANDSHAKE_TIMEOUT = 10.0
GOODBYE_TIMEOUT = 1.0
READ_LIMIT = MAX_HEADER_SIZE + MAX_PAYLOAD_SIZE
SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the NUL


class VersionMismatch(ProtocolError):
    pass


class Connection:
    def __init__(
        self, ctx: AgentContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._ctx = ctx
        self._reader = reader
        self._writer = writer
        # One writer at a time: frames must not interleave, and Python 3.9's drain() breaks
        # when two tasks wait in it at once.
        self._write_lock = asyncio.Lock()
        # Open requests by id. A request leaves this map *before* its final frame is sent, or
        # when its cancel frame arrives, so the agent never counts more open requests than the
        # client does (the client frees a slot on seeing the final frame or sending cancel).
        self._requests: Dict[int, Tuple[Stream, asyncio.Task[None]]] = {}
        # Every handler task, including cancelled ones still cleaning up.
        self._tasks: Set[asyncio.Task[None]] = set()
        self._closed = False

    async def send(self, header: Mapping[str, Any], payload: bytes = b"") -> None:
        frame = encode_frame(header, payload)
        async with self._write_lock:
            if self._closed:
                raise ConnectionResetError("connection closed")
            self._writer.write(frame)
            await self._writer.drain()

    async def serve(self) -> None:
        try:
            await asyncio.wait_for(self._handshake(), HANDSHAKE_TIMEOUT)
            while True:
                header, payload = await self._read_frame()
                self._dispatch(header, payload)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
            pass  # the client went away, or never said hello
        except ProtocolError as exc:
            log.warning("closing a connection: %s", exc)
            code = VERSION_MISMATCH if isinstance(exc, VersionMismatch) else PROTOCOL_ERROR
            await self._goodbye(code, str(exc))
        finally:
            await self._close()

    async def _handshake(self) -> None:
        header, _ = await self._read_frame()
        if header["t"] != HELLO:
            raise ProtocolError(f"expected a hello frame first, got {header['t']!r}")
        # Answer before judging, so a client of another version can report what it found.
        await self.send(
            {"t": HELLO, "id": 0, "version": PROTOCOL_VERSION, "ops": sorted(OPS)},
        )
        if header.get("version") != PROTOCOL_VERSION:
            raise VersionMismatch(
                f"client speaks protocol version {header.get('version')!r},"
                f" this agent speaks {PROTOCOL_VERSION}"
            )

    async def _read_frame(self) -> Tuple[Header, bytes]:
        header_len, payload_len = parse_prefix(await self._reader.readexactly(PREFIX.size))
        body = await self._reader.readexactly(header_len + payload_len)
        return parse_header(body[:header_len]), body[header_len:]

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

    def _start(self, sid: int, header: Header) -> None:
        if sid == 0 or sid in self._requests:
            raise ProtocolError(f"request id {sid} is 0 or already in use")
        if len(self._requests) >= MAX_CONCURRENT_REQUESTS:
            raise ProtocolError(f"more than {MAX_CONCURRENT_REQUESTS} concurrent requests")
        op, args = header.get("op"), header.get("args", {})
        handler = OPS.get(op) if isinstance(op, str) else None
        if handler is None:
            handler = _refuse(OpError(UNKNOWN_OP, f"unknown op {op!r}; known: {sorted(OPS)}"))
        elif not isinstance(args, dict):
            handler = _refuse(OpError(BAD_REQUEST, "'args' must be an object"))
        stream = Stream(self, sid)
        task = asyncio.get_running_loop().create_task(self._run(stream, handler, args, op))
        self._requests[sid] = (stream, task)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, stream: Stream, handler: Handler, args: Any, op: object) -> None:
        try:
            try:
                body = await handler(self._ctx, stream, args)
            except OpError as exc:
                final = {"t": ERR, "id": stream.id, "code": exc.code, "message": exc.message}
            except (ConnectionError, asyncio.CancelledError):
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

    async def _goodbye(self, code: str, message: str) -> None:
        """Tell the client why it is being dropped; best effort, it may not be reading."""
        try:
            frame = {"t": ERR, "id": 0, "code": code, "message": message}
            await asyncio.wait_for(self.send(frame), GOODBYE_TIMEOUT)
        except (asyncio.TimeoutError, ConnectionError):
            pass

    async def _close(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()  # kills their processes, removes their temp files
        if tasks:
            await asyncio.wait(tasks)
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def _refuse(error: OpError) -> Handler:
    async def handler(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
        raise error

    return handler


def bind_unix(path: str) -> socket.socket:
    """Listen at ``path``, replacing a stale socket, readable by the owner only.

    Paths longer than sun_path are bound through /proc/self/fd/<dirfd>/<name>.
    """
    parent, name = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # no window in which the socket is open to others
    dir_fd = -1
    try:
        address = path
        if len(os.fsencode(path)) > SUN_PATH_MAX:
            dir_fd = os.open(parent, os.O_PATH | os.O_CLOEXEC)
            address = f"/proc/self/fd/{dir_fd}/{name}"
        sock.bind(address)
        os.chmod(path, 0o600)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
        if dir_fd >= 0:
            os.close(dir_fd)
    return sock


async def serve(socket_path: str, base_env: Mapping[str, str]) -> int:
    """Run the agent until SIGTERM; then kill every command and remove the socket."""
    loop = asyncio.get_running_loop()
    reaper = Reaper()
    reaper.install()
    ctx = AgentContext(base_env, reaper)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    for noise in (signal.SIGINT, signal.SIGHUP):
        # A handler rather than SIG_IGN: ignored signals would stay ignored in every command.
        loop.add_signal_handler(noise, lambda: None)

    sock = bind_unix(socket_path)
    inode = os.stat(socket_path).st_ino
    connections: Set[asyncio.Task[Any]] = set()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        try:
            await Connection(ctx, reader, writer).serve()
        except asyncio.CancelledError:
            pass  # shutdown; asyncio would log a cancelled connection task as an error
        finally:
            connections.discard(task)

    server = await asyncio.start_unix_server(on_client, sock=sock, limit=READ_LIMIT)
    log.info("listening on %s (protocol %d, pid %d)", socket_path, PROTOCOL_VERSION, os.getpid())
    try:
        await stop.wait()
    finally:
        server.close()
        for task in list(connections):
            task.cancel()
        if connections:
            await asyncio.wait(connections)
        await server.wait_closed()
        for pgid in list(ctx.groups):
            kill_group(pgid)
        if os.getpid() == 1:
            try:
                os.kill(-1, signal.SIGKILL)  # as init: everything left in the namespace
            except ProcessLookupError:
                pass
        try:
            if os.stat(socket_path).st_ino == inode:
                os.unlink(socket_path)
        except OSError:
            pass
    log.info("stopped")
    return 0
