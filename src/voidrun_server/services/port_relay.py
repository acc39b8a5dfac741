"""Sandbox ports through the agent, for drivers the host cannot ``setns`` into (``PortOpener``).

gVisor keeps a sandbox's loopback in its own netstack and a microVM in its guest kernel, so the
preview proxy cannot open a socket there the way the namespace driver does. Instead the
sandbox's agent connects to the port inside (``port.connect``, ``agent/portconnect.py``) and
relays the bytes over the sandbox's one agent connection.

The proxy's code wants a socket (httpcore's backend and ``websockets`` both take one), so
:meth:`AgentPorts.open_port` hands it one end of a ``socketpair`` and a task of the app's task
group moves bytes between the other end and the agent stream (:func:`_relay`). Flow control
holds on both legs: a chunk is read from one side only once the previous one was taken by the
other (the agent stream waits for its window; the socket write waits for room), so a relay
holds at most one chunk, one protocol window and two socket buffers, whatever either end does.

A relay ends when both directions ended (EOF each way), when either side fails (a reset, the
agent connection lost: the sandbox stopped), or ``EOF_LINGER`` seconds after the proxy's side
ended if the server inside never closes its own (the proxy's side never half-closes: its EOF
means it is gone). Either way the agent request is cancelled, which closes the socket inside.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import anyio
import anyio.abc

from ..agentclient import (
    PORT_CLOSED,
    AgentClient,
    AgentError,
    AgentOperationError,
    PortStream,
)
from ..drivers.base import DriverTimeoutError, PortClosedError
from ..errors import UpstreamError
from .agents import agent_text, outdated_agent
from .sandboxes import SandboxService

__all__ = ["AgentPorts"]

log = logging.getLogger(__name__)

CHUNK = 256 * 1024  # the agent protocol's largest payload
EOF_LINGER = 30.0
_ENDED = (
    OSError,
    AgentError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)


class AgentPorts:
    """A ``PortOpener`` for every driver: through the sandbox's agent (see module doc)."""

    def __init__(self, sandboxes: SandboxService, task_group: anyio.abc.TaskGroup) -> None:
        self._sandboxes = sandboxes
        self._task_group = task_group
        self.open_relays = 0

    async def open_port(self, sandbox_id: str, port: int, *, within: float) -> socket.socket:
        agent_socket = await self._sandboxes.agent_socket(sandbox_id)

        async def connect(client: AgentClient) -> PortStream:
            return await client.open_port(port)

        try:
            with anyio.fail_after(within):
                stream = await self._sandboxes.agents.run(sandbox_id, agent_socket, connect)
        except TimeoutError as exc:
            raise DriverTimeoutError(
                f"port {port} in the sandbox did not accept a connection in time",
                f"after {within:.1f}s",
            ) from exc
        except AgentOperationError as exc:
            outdated = outdated_agent(exc)
            if outdated is not None:
                raise outdated from exc
            if exc.code == PORT_CLOSED:
                raise PortClosedError(
                    f"nothing listens on port {port} in the sandbox",
                    "start a server on that port inside the sandbox (on 0.0.0.0 or 127.0.0.1)",
                ) from exc
            raise UpstreamError(
                details=f"connection to port {port} failed: {agent_text(exc.message)}"
            ) from exc
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError:
            await stream.aclose()
            raise
        ours.setblocking(False)
        self.open_relays += 1
        self._task_group.start_soon(self._run, stream, ours, name=f"port relay {sandbox_id}")
        return theirs

    async def _run(self, stream: PortStream, sock: socket.socket) -> None:
        try:
            await _relay(stream, sock)
        except Exception:  # never into the app's task group
            log.warning("port relay failed", exc_info=True)
        finally:
            self.open_relays -= 1
            sock.close()
            await stream.aclose()


async def _relay(stream: PortStream, sock: socket.socket) -> None:
    """Move bytes between ``sock`` (the proxy's side) and ``stream`` until both ended, or
    either failed (see the module doc)."""
    loop = asyncio.get_running_loop()
    ended: set[str] = set()
    async with anyio.create_task_group() as tasks:

        async def outbound() -> None:  # the proxy's bytes into the sandbox
            try:
                while data := await loop.sock_recv(sock, CHUNK):
                    await stream.send(data)
                await stream.send_eof()
            except _ENDED:
                tasks.cancel_scope.cancel()
                return
            ended.add("proxy")
            if "sandbox" not in ended:  # the server inside may still answer, not for ever
                await anyio.sleep(EOF_LINGER)
                tasks.cancel_scope.cancel()

        async def inbound() -> None:  # the sandbox's bytes to the proxy
            try:
                while True:
                    try:
                        data = await stream.receive(CHUNK)
                    except anyio.EndOfStream:
                        sock.shutdown(socket.SHUT_WR)
                        break
                    await loop.sock_sendall(sock, data)
            except _ENDED:
                tasks.cancel_scope.cancel()
                return
            ended.add("sandbox")
            if "proxy" in ended:
                tasks.cancel_scope.cancel()  # both ended: stop the linger

        tasks.start_soon(outbound)
        tasks.start_soon(inbound)
