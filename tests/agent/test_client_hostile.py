"""The server's agent client against an agent that lies: every malformed answer ends that one
connection with ``AgentProtocolError`` (never another exception type), and ``AgentPool`` keeps
the failure away from the app's task group. No sandbox needed: the "agent" is a thread on a
Unix socket speaking just enough of the protocol (``tests/hostile/hostile_agent.py``)."""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import anyio
import pytest

from tests.hostile import hostile_agent
from voidrun_server.agent.protocol import FRAME_COST, INITIAL_WINDOW, PROTOCOL_VERSION
from voidrun_server.agentclient import (
    AgentClient,
    AgentProtocolError,
    AgentResponseTooLargeError,
)
from voidrun_server.agentclient._channel import Channel
from voidrun_server.agentclient._wire import Connection
from voidrun_server.errors import SandboxUnavailableError
from voidrun_server.services.agents import AgentPool, AgentSocket

PREFIX = struct.Struct(">II")
Attack = Callable[[socket.socket, int], None]


def frame(header: object, payload: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return PREFIX.pack(len(raw), len(payload)) + raw + payload


def unknown_request(conn: socket.socket, sid: int) -> None:
    conn.sendall(frame({"t": "res", "id": sid + 1000, "body": {}}))


def huge_data_header(conn: socket.socket, sid: int) -> None:
    conn.sendall(frame({"t": "data", "id": sid, "ch": "stdout", "pad": "x" * 100_000}, b"x"))


def modes() -> dict[str, Attack]:
    named: dict[str, Attack] = {}
    for mode in ("bad-type", "huge-length", "truncated", "bad-utf8", "deep-json", "head-flood"):
        named[mode] = lambda conn, sid, mode=mode: hostile_agent.attack(conn, mode, sid)
    named.update(
        {
            "unknown-request": unknown_request,
            "huge-data-header": huge_data_header,
        }
    )
    return named


@pytest.fixture
def fake_agent(tmp_path: Path) -> Iterator[Callable[[Attack], Path]]:
    listeners: list[socket.socket] = []

    def start(attack: Attack) -> Path:
        path = tmp_path / "agent.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(4)
        listeners.append(listener)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                hostile_agent.read_frame(conn)
                conn.sendall(frame({"t": "hello", "id": 0, "version": PROTOCOL_VERSION}))
                header, _ = hostile_agent.read_frame(conn)
                attack(conn, header["id"])
                conn.settimeout(10)
                while conn.recv(65536):  # stay until the client hangs up, as an agent would
                    pass
            except (OSError, EOFError):
                pass
            finally:
                conn.close()

        threading.Thread(target=serve, daemon=True).start()
        return path

    yield start
    for listener in listeners:
        listener.close()


@pytest.mark.parametrize("mode", sorted(modes()))
async def test_every_lie_is_a_protocol_error(
    fake_agent: Callable[[Attack], Path], mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hostile_agent.time, "sleep", lambda _: None)  # no hour-long naps
    path = fake_agent(modes()[mode])
    async with AgentClient(path, connect_timeout=5) as client:
        with anyio.fail_after(20), pytest.raises(AgentProtocolError):
            await client.exec("true")
        assert isinstance(client.failure, AgentProtocolError)


async def test_a_violation_never_reaches_the_pool_task_group(
    fake_agent: Callable[[Attack], Path],
) -> None:
    reported: list[tuple[str, str]] = []
    path = fake_agent(lambda conn, sid: hostile_agent.attack(conn, "bad-type", sid))
    async with anyio.create_task_group() as task_group:
        pool = AgentPool(task_group, 5, on_violation=lambda *a: reported.append(a))
        with pytest.raises(SandboxUnavailableError, match="agent error"):
            await pool.run("box", AgentSocket(path, None), lambda client: client.exec("true"))
        assert reported[0][0] == "box" and "unknown frame type" in reported[0][1]
        await anyio.sleep(0.1)  # the holder task has ended by now, quietly
        assert not task_group.cancel_scope.cancel_called
        task_group.cancel_scope.cancel()


def test_empty_data_frames_count_against_the_window() -> None:
    """Zero-byte data frames were free before protocol version 2; a consumer that does not
    read could be sent an unbounded number of them. Now each costs ``FRAME_COST``."""
    channel = Channel(cast(Connection, object()), 1)
    empty = {"t": "data", "id": 1, "ch": "stdout"}
    for _ in range(INITIAL_WINDOW // FRAME_COST):
        channel.on_frame(dict(empty), b"")
    with pytest.raises(AgentProtocolError, match="overran the window"):
        channel.on_frame(dict(empty), b"")


def test_a_second_head_is_refused() -> None:
    channel = Channel(cast(Connection, object()), 1)
    channel.on_frame({"t": "head", "id": 1, "body": {}}, b"")
    with pytest.raises(AgentProtocolError, match="second or late head"):
        channel.on_frame({"t": "head", "id": 1, "body": {}}, b"")


def endless_output(conn: socket.socket, sid: int) -> None:
    """Honest framing, dishonest volume: more exec output than the request's cap."""
    chunk = frame({"t": "data", "id": sid, "ch": "stdout"}, b"x" * 65536)
    try:
        while True:
            conn.sendall(chunk)
    except OSError:
        pass


async def test_output_past_the_cap_fails_the_request_not_the_connection(
    fake_agent: Callable[[Attack], Path],
) -> None:
    path = fake_agent(endless_output)
    async with AgentClient(path, connect_timeout=5) as client:
        with anyio.fail_after(20), pytest.raises(AgentResponseTooLargeError, match="1048576"):
            await client.exec("yes", max_output=1 << 20)
        assert client.failure is None  # only that request ended


@pytest.mark.parametrize("mode", ["relay-overrun", "relay-data-after-end", "relay-no-head"])
async def test_a_lying_port_relay_is_a_protocol_error(
    fake_agent: Callable[[Attack], Path], mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``port.connect`` (the preview relay): data past the window, data after the agent's end,
    data before the head: each is an ``AgentProtocolError`` (the first two end the connection,
    which ``AgentPool`` reports as a violation), never more than one window buffered
    (relay-overrun floods a stream nobody reads: cut at the window)."""
    monkeypatch.setattr(hostile_agent.time, "sleep", lambda _: None)
    path = fake_agent(lambda conn, sid: hostile_agent.attack(conn, mode, sid))
    async with AgentClient(path, connect_timeout=5) as client:
        with anyio.fail_after(20):
            if mode == "relay-no-head":
                with pytest.raises(AgentProtocolError, match="not head"):
                    await client.open_port(8000)
            else:
                stream = await client.open_port(8000)
                await client.wait_closed()  # nobody reads: the reader alone judges the frames
                await stream.aclose()
                assert isinstance(client.failure, AgentProtocolError)


def test_end_from_the_agent_ends_the_data() -> None:
    channel = Channel(cast(Connection, object()), 1)
    channel.on_frame({"t": "head", "id": 1, "body": {}}, b"")
    channel.on_frame({"t": "data", "id": 1, "ch": "port"}, b"x")
    channel.on_frame({"t": "end", "id": 1}, b"")
    for late in ({"t": "data", "id": 1, "ch": "port"}, {"t": "end", "id": 1}):
        with pytest.raises(AgentProtocolError, match="after end"):
            channel.on_frame(dict(late), b"")
