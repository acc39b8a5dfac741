"""The client never follows a symlink planted where the agent socket should be."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import anyio
import anyio.abc
import pytest

from tests.agent.agent_helpers import AgentProcess
from voidrun_server.agentclient import AgentClient, AgentConnectionError


class Decoy:
    """A socket that answers like an agent (it forwards to a real one) and counts connections."""

    def __init__(self, agent_socket: Path) -> None:
        self.agent_socket = agent_socket
        self.connections = 0

    async def serve(self, listener: anyio.abc.SocketListener) -> None:
        async with listener:
            await listener.serve(self.forward)

    async def forward(self, client: anyio.abc.SocketStream) -> None:
        self.connections += 1
        async with client, await anyio.connect_unix(str(self.agent_socket)) as agent:

            async def pump(src: anyio.abc.ByteStream, dst: anyio.abc.ByteStream) -> None:
                with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                    async for chunk in src:
                        await dst.send(chunk)
                tasks.cancel_scope.cancel()

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(pump, client, agent)
                tasks.start_soon(pump, agent, client)


async def test_symlinked_socket_is_refused(tmp_path: Path, agent: AgentProcess) -> None:
    decoy_path = tmp_path / "decoy.sock"
    decoy = Decoy(agent.socket)
    async with AgentClient(agent.socket, connect_timeout=30) as real:  # the agent is up
        await real.ping()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(decoy.serve, await anyio.create_unix_listener(decoy_path))
        # the decoy is a working agent: connecting to it directly succeeds and is seen
        async with AgentClient(decoy_path, connect_timeout=10) as direct:
            await direct.ping()
        assert decoy.connections == 1
        (tmp_path / "agent.sock").symlink_to(decoy_path)
        with pytest.raises(AgentConnectionError, match="agent.sock is not a socket owned by uid"):
            async with AgentClient(tmp_path / "agent.sock", connect_timeout=1):
                pass
        await anyio.sleep(0.5)  # an accepted connection would have been counted by now
        assert decoy.connections == 1, "the client followed the symlink to the decoy"
        tasks.cancel_scope.cancel()


async def test_socket_owned_by_another_uid_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    try:
        with pytest.raises(AgentConnectionError, match="not a socket owned by uid"):
            async with AgentClient(path, connect_timeout=1, owner_uid=os.geteuid() + 1):
                pass
    finally:
        listener.close()
