"""A TCP connection to a port inside the sandbox, through the agent (``port.connect``).

:class:`PortStream` is an anyio byte stream: ``send``/``receive``/``send_eof``/``aclose``, one
task may send while another receives. It owns one request on the client's connection. Bytes
move under the protocol's flow control both ways, so neither side holds more than one window
(1 MiB) of this connection's bytes, however slow the other end is.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc

from voidrun_server.agent.protocol import DATA, END, HEAD, RES

from ._channel import Channel
from ._errors import AgentError, AgentProtocolError, AgentRequestFinished
from ._wire import Connection

__all__ = ["PortStream", "open_port_stream"]


async def open_port_stream(conn: Connection, port: int) -> PortStream:
    """Connect to ``port`` inside; returns once connected. Refusals raise
    ``AgentOperationError`` (``port_closed``: nothing listens there)."""
    channel = await conn.open("port.connect", {"port": port})
    try:
        header, _ = await channel.receive()
        if header["t"] != HEAD:
            raise AgentProtocolError(f"port.connect began with {header['t']!r}, not head")
    except BaseException:
        channel.close()
        raise
    return PortStream(channel)


class PortStream(anyio.abc.ByteStream):
    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._pending = b""  # the rest of a frame larger than a receive asked for
        self._eof = False  # the server's side ended (agent ``end`` or the request's answer)
        self._eof_sent = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """The server's next bytes; ``anyio.EndOfStream`` once it closed its side. An agent
        failure raises ``AgentError`` (``AgentOperationError`` io_error: the connection broke
        inside)."""
        if not self._pending:
            self._pending = await self._next()
        chunk, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return chunk

    async def _next(self) -> bytes:
        while not self._eof:
            if self._channel.finished:
                raise anyio.ClosedResourceError
            header, payload = await self._channel.receive()
            kind = header["t"]
            if kind == DATA:
                if payload:
                    return payload
            elif kind in (END, RES):
                self._eof = True
            else:
                raise AgentProtocolError(f"unexpected {kind!r} frame in port.connect")
        raise anyio.EndOfStream

    async def send(self, item: bytes) -> None:
        if self._eof_sent or self._channel.finished:
            raise anyio.ClosedResourceError
        try:
            await self._channel.send_data(item, reader_elsewhere=True)
        except AgentRequestFinished:
            raise anyio.BrokenResourceError from None

    async def send_eof(self) -> None:
        if self._eof_sent or self._channel.finished:
            return
        self._eof_sent = True
        try:
            await self._channel.send_end()
        except AgentError:
            raise anyio.BrokenResourceError from None

    async def aclose(self) -> None:
        """Closes the connection inside at once (cancels the request if it still runs)."""
        self._channel.close()

    @property
    def extra_attributes(self) -> Any:
        return {}
