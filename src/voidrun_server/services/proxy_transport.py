"""httpcore's network backend for the preview proxy: connections into sandboxes.

httpcore speaks HTTP/1.1 (h11: keep-alive, chunked bodies, strict parsing of what a hostile
server sends) over whatever stream its backend hands it. This backend hands it the socket the
driver opened inside the sandbox's network namespace (``PortOpener.open_port``; for drivers
without one, a socketpair relayed by the sandbox's agent: ``port_relay.py``), so the origin
``http://<sandbox id>:<port>`` means "that port in that sandbox". Errors are httpcore's own
exception classes, as its bundled backends raise them.

The stream is an asyncio protocol of its own with flow control both ways, because the socket
stream anyio makes from a socket does not bound what it reads: its transport reads from the
start and is paused only by a ``receive`` that found nothing buffered, so while data keeps
coming faster than a stalled client takes it, it buffers all of it (measured: a gigabyte in
three seconds). Here at most ``BUFFER_LIMIT`` bytes wait (plus one read of the event loop's):
reading pauses at the limit and resumes when ``read`` drains it; ``write`` waits while the
transport's own buffer is above its high-water mark. An idle connection keeps reading, so a
server that closes it (or sends anything) is seen at once (``is_readable``).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

import anyio
import httpcore

__all__ = ["BUFFER_LIMIT", "SandboxNetwork", "SandboxStream"]

OpenPort = Callable[[str, int, float], Awaitable[socket.socket]]
BUFFER_LIMIT = 256 * 1024


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.reading = True
        self.eof = False
        self.lost = False
        self.error: BaseException | None = None
        self._readable: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered >= BUFFER_LIMIT and self.reading and self.transport is not None:
            self.reading = False
            self.transport.pause_reading()
        _wake(self._readable)

    def eof_received(self) -> bool:
        self.eof = True
        _wake(self._readable)
        return True  # half-open: the request may still be written; h11 sees the end

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self.error = exc
        _wake(self._readable)
        _wake(self._writable)

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        waiter, self._writable = self._writable, None
        _wake(waiter)

    async def wait_readable(self) -> None:
        waiter = self._readable = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._readable = None

    async def wait_writable(self) -> None:
        if self._writable is not None and not self.lost:
            await asyncio.shield(self._writable)


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class SandboxStream(httpcore.AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        proto = self._protocol
        if proto.chunks or proto.eof or proto.lost:
            # Yield anyway: a cancel (the client left, a deadline) is delivered only to a task
            # that yields without a completed wait, and a fast server keeps every wait short.
            await asyncio.sleep(0)
        elif timeout is None:
            await proto.wait_readable()
        else:
            try:
                with anyio.fail_after(timeout):
                    await proto.wait_readable()
            except TimeoutError as exc:
                raise httpcore.ReadTimeout(f"no data within {timeout:g}s") from exc
        if not proto.chunks:
            if proto.error is not None:
                raise httpcore.ReadError(str(proto.error) or "connection reset")
            return b""  # the end (eof, or closed)
        chunk = proto.chunks.popleft()
        if len(chunk) > max_bytes:
            proto.chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        proto.buffered -= len(chunk)
        if not proto.reading and proto.buffered < BUFFER_LIMIT and not proto.lost:
            proto.reading = True
            self._transport.resume_reading()
        return chunk

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        proto = self._protocol
        if proto.lost or self._transport.is_closing():
            raise httpcore.WriteError(str(proto.error or "connection closed"))
        self._transport.write(buffer)
        try:
            if timeout is None:
                await proto.wait_writable()
            else:
                with anyio.fail_after(timeout):
                    await proto.wait_writable()
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(f"could not write within {timeout:g}s") from exc
        if proto.lost and proto.error is not None:
            raise httpcore.WriteError(str(proto.error))

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("the preview proxy speaks plain HTTP to the sandbox")

    def get_extra_info(self, info: str) -> Any:
        if info == "socket":
            return self._transport.get_extra_info("socket")
        if info == "is_readable":  # an idle connection with anything to read was closed
            proto = self._protocol
            return bool(proto.chunks) or proto.eof or proto.lost
        return None


class SandboxNetwork(httpcore.AsyncNetworkBackend):
    """``connect_tcp(host=<sandbox id>, port)`` opens ``port`` inside that sandbox."""

    def __init__(self, open_port: OpenPort, connect_timeout: float) -> None:
        self._open_port = open_port
        self._connect_timeout = connect_timeout

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        sock = await self._open_port(host, port, timeout or self._connect_timeout)
        try:
            if sock.family != socket.AF_UNIX:  # a relay's socketpair (``port_relay.py``)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            loop = asyncio.get_running_loop()
            transport, protocol = await loop.create_connection(_Protocol, sock=sock)
        except BaseException:
            sock.close()
            raise
        return SandboxStream(transport, protocol)

    async def connect(self, sandbox_id: str, port: int) -> httpcore.AsyncNetworkStream:
        return await self.connect_tcp(sandbox_id, port)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("the preview proxy reaches sandboxes over TCP only")

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)
