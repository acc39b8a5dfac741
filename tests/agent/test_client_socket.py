"""The client never follows a symlink planted where the agent socket should be."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from voidrun_server.agentclient import AgentClient, AgentConnectionError


async def test_symlinked_socket_is_refused(tmp_path: Path) -> None:
    decoy_path = tmp_path / "decoy.sock"
    decoy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    decoy.bind(str(decoy_path))
    decoy.listen(1)
    try:
        (tmp_path / "agent.sock").symlink_to(decoy_path)
        with pytest.raises(AgentConnectionError):
            async with AgentClient(tmp_path / "agent.sock", connect_timeout=1):
                pass
    finally:
        decoy.close()


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
