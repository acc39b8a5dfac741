"""Connection-level behaviour: handshake, bad frames, reconnects, long paths, shutdown."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests.agent.agent_helpers import (
    AgentFactory,
    AgentProcess,
    RawConnection,
    copy_agent,
    eventually,
    is_running,
)
from voidrun_server.agent.protocol import MAX_PAYLOAD_SIZE, PROTOCOL_VERSION
from voidrun_server.agentclient import AgentClient, AgentConnectionError, AgentVersionError


def frame(header: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">II", len(header), len(payload)) + header + payload


MALFORMED = {
    "empty header": frame(b""),
    "oversized payload": struct.pack(">II", 10, MAX_PAYLOAD_SIZE + 1),
    "oversized header": struct.pack(">II", 64 * 1024 * 1024, 0),
    "not json": frame(b"{nope"),
    "not an object": frame(b"[1, 2]"),
    "not utf-8": frame(b'{"t": "\xff"}'),
    "unknown type": frame(b'{"t": "bogus", "id": 1}'),
    "negative id": frame(b'{"t": "req", "id": -1, "op": "ping"}'),
    "payload on a control frame": frame(b'{"t": "req", "id": 1, "op": "ping"}', b"x"),
    "window of zero": frame(b'{"t": "req", "id": 1, "op": "exec", "args": {"command": "sleep 5"}}')
    + frame(b'{"t": "window", "id": 1, "n": 0}'),
    "agent-only frame": frame(b'{"t": "res", "id": 1, "body": {}}'),
    "reused id": frame(b'{"t": "req", "id": 1, "op": "exec", "args": {"command": "sleep 5"}}')
    + frame(b'{"t": "req", "id": 1, "op": "ping"}'),
    "window overrun": frame(b'{"t": "req", "id": 1, "op": "exec", "args": {"command": "sleep 5"}}')
    + b"".join(frame(b'{"t": "data", "id": 1}', b"\0" * MAX_PAYLOAD_SIZE) for _ in range(5)),
}


@pytest.mark.parametrize("name", list(MALFORMED))
async def test_malformed_frame_closes_only_that_connection(agent: AgentProcess, name: str) -> None:
    async with AgentClient(agent.socket) as bystander:
        await bystander.ping()
        raw = await RawConnection.open(agent.socket)
        try:
            await raw.send_raw(MALFORMED[name])
            frames = await raw.recv_until_closed()
        finally:
            await raw.aclose()
        assert frames[-1]["t"] == "err"
        assert frames[-1]["id"] == 0
        assert frames[-1]["code"] == "protocol_error"
        await bystander.ping()  # the other connection is untouched
    async with AgentClient(agent.socket) as newcomer:  # and the agent still accepts new ones
        result = await newcomer.exec("echo ok")
    assert result.stdout == b"ok\n"


async def test_a_request_before_hello_is_refused(agent: AgentProcess) -> None:
    raw = await RawConnection.open(agent.socket, hello=False)
    try:
        await raw.send({"t": "req", "id": 1, "op": "ping"})
        frames = await raw.recv_until_closed()
    finally:
        await raw.aclose()
    assert [f["t"] for f in frames] == ["err"]


async def test_request_errors_keep_the_connection(agent: AgentProcess) -> None:
    raw = await RawConnection.open(agent.socket)
    try:
        await raw.send({"t": "req", "id": 1, "op": "no.such.op"})
        await raw.send({"t": "req", "id": 2, "op": "exec", "args": {"command": 5}})
        await raw.send({"t": "req", "id": 3, "op": "exec", "args": "not an object"})
        await raw.send({"t": "req", "id": 4, "op": "env.set", "args": {"env": {"A=B": "x"}}})
        await raw.send({"t": "req", "id": 5, "op": "ping"})
        replies = {}
        for _ in range(5):
            header, _ = await raw.recv()
            replies[header["id"]] = header
    finally:
        await raw.aclose()
    assert replies[1]["code"] == "unknown_op"
    assert replies[2]["code"] == "bad_request"
    assert replies[3]["code"] == "bad_request"
    assert replies[4]["code"] == "bad_request"
    assert replies[5] == {"t": "res", "id": 5, "body": {}}


async def test_agent_refuses_a_client_of_another_version(agent: AgentProcess) -> None:
    raw = await RawConnection.open(agent.socket, hello=False)
    try:
        await raw.send({"t": "hello", "id": 0, "version": PROTOCOL_VERSION + 1})
        frames = await raw.recv_until_closed()
    finally:
        await raw.aclose()
    assert frames[0] == {
        "t": "hello",
        "id": 0,
        "version": PROTOCOL_VERSION,
        "ops": frames[0]["ops"],
    }
    assert frames[1]["code"] == "version_mismatch"


async def test_client_refuses_an_agent_of_another_version(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    mount = copy_agent(tmp_path / "old-mount")
    protocol = mount / "voidrun_agent" / "protocol.py"
    source = protocol.read_text()
    assert f"PROTOCOL_VERSION = {PROTOCOL_VERSION}\n" in source
    protocol.write_text(
        source.replace(f"PROTOCOL_VERSION = {PROTOCOL_VERSION}\n", "PROTOCOL_VERSION = 999\n")
    )
    agent = start_agent(mount=mount)
    with pytest.raises(AgentVersionError, match="version 999") as info:
        async with AgentClient(agent.socket):
            pass
    assert info.value.agent_version == 999


async def test_connect_deadline(tmp_path: Path) -> None:
    with pytest.raises(AgentConnectionError, match="did not accept a connection"):
        async with AgentClient(tmp_path / "nobody.sock", connect_timeout=0.2):
            pass


async def test_client_waits_for_a_starting_agent(start_agent: AgentFactory) -> None:
    agent = start_agent()  # not waited for: the client retries until the socket is up
    async with AgentClient(agent.socket, connect_timeout=30) as client:
        await client.ping()


async def test_long_socket_path(start_agent: AgentFactory, tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    agent = start_agent(socket=deep / "agent.sock")
    assert len(str(agent.socket)) > 108
    async with AgentClient(agent.socket) as client:
        assert (await client.exec("echo long")).stdout == b"long\n"
    assert oct(agent.socket.stat().st_mode & 0o777) == "0o600"


async def test_stale_socket_is_replaced(start_agent: AgentFactory, tmp_path: Path) -> None:
    first = start_agent(socket=tmp_path / "run" / "agent.sock")
    async with AgentClient(first.socket) as client:
        await client.ping()
    first.proc.kill()  # no cleanup: the socket file stays behind
    first.proc.wait()
    assert first.socket.exists()
    second = start_agent(socket=first.socket)
    async with AgentClient(second.socket) as client:
        await client.ping()


async def test_many_clients_at_once(agent: AgentProcess) -> None:
    async with AgentClient(agent.socket) as first, AgentClient(agent.socket) as second:
        async with first.exec_stream("echo a; sleep 100") as stream:
            await stream.__anext__()
            assert (await second.exec("echo b")).stdout == b"b\n"


async def test_sigterm_kills_commands_and_removes_the_socket(agent: AgentProcess) -> None:
    async with AgentClient(agent.socket) as client:
        async with client.exec_stream("echo up; sleep 100") as stream:
            await stream.__anext__()
            pid = stream.pid
            assert agent.terminate() == 0
        await eventually(lambda: client.closed, "the client notices")
        with pytest.raises(AgentConnectionError, match="closed the connection"):
            await client.ping()
    assert client.closed
    assert not agent.socket.exists()
    await eventually(lambda: not is_running(pid), "the command died with the agent")
