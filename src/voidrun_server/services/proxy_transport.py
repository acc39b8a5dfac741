"""httpcore's network backend for the preview proxy: connections into sandboxes.

httpcore speaks HTTP/1.1 (h11: keep-alive, chunked bodies, strict parsing of what a hostile
server sends) over whatever stream its backend hands it. This backend hands it the socket the
driver opened inside the sandbox's network namespace (``PortOpener.open_port``), so the pool's
origin ``http://<sandbox id>:<port>`` means "that port in that sandbox" and keep-alive
connections are pooled per sandbox and port. Errors are httpcore's own exception classes, as its
bundled backends raise them.
"""

from __future__ import annotations

import select
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
import anyio.abc
import httpcore

__all__ = ["SandboxNetwork", "SandboxStream"]

OpenPort = Callable[[str, int, float], Awaitable[socket.socket]]
_READ_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class SandboxStream(httpcore.AsyncNetworkStream):
    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        try:
            if timeout is None:  # a cancel scope per read is a cost worth avoiding
                return await self._stream.receive(max_bytes)
            with anyio.fail_after(timeout):
                return await self._stream.receive(max_bytes)
        except anyio.EndOfStream:
            return b""
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(str(exc)) from exc
        except _READ_ERRORS as exc:
            raise httpcore.ReadError(str(exc)) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        try:
            if timeout is None:
                await self._stream.send(buffer)
            else:
                with anyio.fail_after(timeout):
                    await self._stream.send(buffer)
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc)) from exc
        except _READ_ERRORS as exc:
            raise httpcore.WriteError(str(exc)) from exc

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("the preview proxy speaks plain HTTP to the sandbox")

    def get_extra_info(self, info: str) -> Any:
        sock: socket.socket = self._stream.extra(anyio.abc.SocketAttribute.raw_socket)
        if info == "socket":
            return sock
        if info == "is_readable":  # an idle pooled connection that is readable was closed
            return sock.fileno() >= 0 and bool(select.select([sock], [], [], 0)[0])
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
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return SandboxStream(await anyio.abc.SocketStream.from_socket(sock))
        except BaseException:
            sock.close()
            raise

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
