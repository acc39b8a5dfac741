"""The node's tunnel listener: API replicas reach their sandboxes' agents (and ports, for
previews) through it, so every data-plane service works unchanged on a remote sandbox.

A connection sends one hello line (``agentclient/_tunnel.py``); the node checks the token in
constant time, connects to the target (the agent's Unix socket, pinned and owner-checked as
the all-in-one server does, or the sandbox port through the driver), answers ``OK`` and
splices bytes both ways until either side ends, then closes both. Reads are bounded
(:data:`CHUNK`) and each write waits for the other side to drain, so nothing is buffered beyond
a socket's worth. A hello that is garbage, too long or too slow is answered with an error line
(or dropped) within :data:`HELLO_DEADLINE` seconds.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
from collections.abc import Callable

from .. import ids
from ..agentclient import AgentConnectionError
from ..agentclient._socket import connect_unix
from ..agentclient._tunnel import AUTH, BAD, CLOSED, MAGIC, MAX_LINE, NOT_FOUND, UNAVAILABLE
from ..agentclient._tunnel import VERSION as TUNNEL_VERSION
from ..drivers.base import (
    DriverError,
    PortClosedError,
    SandboxNotFoundError,
    SandboxState,
    SandboxStateError,
)
from ..drivers.driverset import DriverSet

log = logging.getLogger(__name__)
HELLO_DEADLINE = 5.0
CONNECT_DEADLINE = 10.0
CHUNK = 64 * 1024


class Refused(Exception):
    def __init__(self, kind: str, message: str) -> None:
        self.kind, self.message = kind, message
        super().__init__(f"{kind}: {message}")


def parse_hello(line: bytes, token: str) -> tuple[str, int | None]:
    """(sandbox id, port or None for the agent); :class:`Refused` for anything else."""
    words = line.decode("ascii", "replace").split()
    if len(words) < 5 or words[0] != MAGIC:
        raise Refused(BAD, "not a tunnel hello")
    if words[1] != str(TUNNEL_VERSION):
        raise Refused(BAD, f"tunnel version {words[1]!r} (this node speaks {TUNNEL_VERSION})")
    if not token or not hmac.compare_digest(words[2].encode(), token.encode()):
        raise Refused(AUTH, "wrong node token")
    sandbox_id = words[3]
    if not ids.is_id(sandbox_id):
        raise Refused(BAD, "not a sandbox id")
    if words[4:] == ["agent"]:
        return sandbox_id, None
    if len(words) == 6 and words[4] == "port" and words[5].isdigit():
        port = int(words[5])
        if 1 <= port <= 65535:
            return sandbox_id, port
    raise Refused(BAD, "target must be 'agent' or 'port N'")


class TunnelServer:
    def __init__(self, drivers: DriverSet, token: str) -> None:
        self.drivers = drivers
        self.token = token
        self.open = 0

    async def serve(self, host: str, port: int, ready: Callable[[], None]) -> None:
        server = await asyncio.start_server(self._handle, host, port, limit=MAX_LINE * 2)
        ready()
        async with server:
            await server.serve_forever()

    async def _connect(self, sandbox_id: str, port: int | None) -> socket.socket:
        if port is not None:
            return await self.drivers.open_port(sandbox_id, port, within=CONNECT_DEADLINE)
        info = await self.drivers.inspect(sandbox_id)
        if info.state is SandboxState.GONE:
            raise Refused(NOT_FOUND, "no such sandbox on this node")
        if info.state is not SandboxState.RUNNING:
            raise Refused(UNAVAILABLE, f"the sandbox is {info.state.value}")
        path = str(info.agent_socket)
        return await connect_unix(path, CONNECT_DEADLINE, info.agent_socket_owner)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target: socket.socket | None = None
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), HELLO_DEADLINE)
                if not line.endswith(b"\n"):
                    return  # closed (or too slow) before a whole hello: nothing to answer
                sandbox_id, port = parse_hello(line, self.token)
                target = await self._open(sandbox_id, port)
            except (TimeoutError, ValueError, asyncio.LimitOverrunError):
                writer.write(f"ERR {BAD} hello too long or too slow\n".encode())
                return
            except Refused as exc:
                writer.write(f"ERR {exc.kind} {exc.message}\n".encode())
                return
            writer.write(b"OK\n")
            await writer.drain()
            sock, target = target, None
            await self._splice(reader, writer, sock)
        except (ConnectionError, OSError) as exc:
            log.debug("tunnel ended: %r", exc)
        finally:
            if target is not None:
                target.close()
            writer.close()

    async def _open(self, sandbox_id: str, port: int | None) -> socket.socket:
        try:
            return await asyncio.wait_for(self._connect(sandbox_id, port), CONNECT_DEADLINE + 1)
        except PortClosedError as exc:
            raise Refused(CLOSED, exc.message) from exc
        except SandboxStateError as exc:
            raise Refused(NOT_FOUND, exc.message) from exc
        except SandboxNotFoundError as exc:
            raise Refused(NOT_FOUND, exc.message) from exc
        except (DriverError, AgentConnectionError, TimeoutError) as exc:
            raise Refused(UNAVAILABLE, str(exc).replace("\n", " ")[:200]) from exc

    async def _splice(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sock: socket.socket
    ) -> None:
        if sock.family == socket.AF_UNIX:
            t_reader, t_writer = await asyncio.open_unix_connection(sock=sock, limit=CHUNK)
        else:
            t_reader, t_writer = await asyncio.open_connection(sock=sock, limit=CHUNK)
        self.open += 1
        try:
            pumps = [
                asyncio.ensure_future(_pump(reader, t_writer)),
                asyncio.ensure_future(_pump(t_reader, writer)),
            ]
            await _first(pumps)
        finally:
            self.open -= 1
            t_writer.close()


async def _first(tasks: list[asyncio.Task[None]]) -> None:
    """Wait for either direction to end, then end the other (both sockets are closed)."""
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
