"""port.connect: a TCP connection to a port on the agent's loopback, relayed over the agent
protocol (the preview proxy's way into gvisor and microvm sandboxes). The agent runs on the
host here, so its loopback is the host's: servers are plain sockets of the test."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio
import pytest

from tests.agent.agent_helpers import AgentProcess, RawConnection
from voidrun_server.agent.protocol import INITIAL_WINDOW, PORT_CLOSED
from voidrun_server.agentclient import AgentClient, AgentOperationError, PortStream

MiB = 1024 * 1024


@contextmanager
def server(handle: Callable[[socket.socket], None], family: int = socket.AF_INET) -> Iterator[int]:
    """A one-connection-at-a-time TCP server on loopback; yields its port."""
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((host, 0))
    listener.listen(8)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                try:
                    handle(conn)
                except OSError:
                    pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(5)


def echo_until_eof(conn: socket.socket) -> None:
    """Echo everything, then after the client's EOF say how much it got, and close."""
    total = 0
    while data := conn.recv(65536):
        total += len(data)
        conn.sendall(data)
    conn.sendall(f"got {total}".encode())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def read_all(stream: PortStream) -> bytes:
    out = bytearray()
    while True:
        try:
            out += await stream.receive()
        except anyio.EndOfStream:
            return bytes(out)


async def test_bytes_both_ways_with_half_close(agent: AgentProcess) -> None:
    """Eight MiB each way (eight windows), at once: the client's EOF reaches the server as a
    shutdown of the socket's write side, and the server's answer after it still comes back."""
    blob = os.urandom(8 * MiB)
    with server(echo_until_eof) as port:
        async with AgentClient(agent.socket) as client:
            stream = await client.open_port(port)
            try:
                async with anyio.create_task_group() as tasks:

                    async def upload() -> None:
                        for offset in range(0, len(blob), 300_001):
                            await stream.send(blob[offset : offset + 300_001])
                        await stream.send_eof()

                    tasks.start_soon(upload)
                    received = await read_all(stream)
            finally:
                await stream.aclose()
            assert received == blob + f"got {len(blob)}".encode()
            await client.ping()  # the connection is fine afterwards


async def test_nothing_listening_is_port_closed(agent: AgentProcess) -> None:
    async with AgentClient(agent.socket) as client:
        with pytest.raises(AgentOperationError) as info:
            await client.open_port(free_port())
        assert info.value.code == PORT_CLOSED
        for bad in (0, 65536, -1, "80", True, 1.5):
            with pytest.raises(AgentOperationError) as refused:
                await client.open_port(bad)  # type: ignore[arg-type]
            assert refused.value.code == "bad_request"


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="this host has no IPv6 loopback")
async def test_a_server_on_ipv6_loopback_only_is_reached(agent: AgentProcess) -> None:
    def hello(conn: socket.socket) -> None:
        conn.sendall(b"from ::1")

    with server(hello, socket.AF_INET6) as port:
        async with AgentClient(agent.socket) as client:
            stream = await client.open_port(port)
            try:
                assert await read_all(stream) == b"from ::1"
            finally:
                await stream.aclose()


async def test_a_client_that_stops_reading_stops_the_server(agent: AgentProcess) -> None:
    """The server writes 64 MiB; the client reads nothing. What leaves the server is bounded by
    the protocol's window plus the kernel's socket buffers, not by the agent's memory."""
    sent = 0
    blocked = threading.Event()

    def flood(conn: socket.socket) -> None:
        nonlocal sent
        conn.settimeout(3)
        chunk = b"x" * 65536
        try:
            for _ in range(1024):
                sent += conn.send(chunk)
        except TimeoutError:
            blocked.set()
            conn.settimeout(30)
            while True:  # the client reads again: let the rest drain
                sent += conn.send(chunk)

    with server(flood) as port:
        async with AgentClient(agent.socket) as client:
            stream = await client.open_port(port)
            try:
                await anyio.to_thread.run_sync(blocked.wait, 30)
                assert blocked.is_set()
                # window + the two sockets' buffers (kernel autotuning: a few MiB at most)
                assert sent < INITIAL_WINDOW + 16 * MiB, sent
                first = await stream.receive()
                assert first and set(first) == {ord("x")}
            finally:
                await stream.aclose()
            await client.ping()


async def test_cancel_closes_the_connection_inside(agent: AgentProcess) -> None:
    """Leaving without EOF (aclose: cancel) closes the socket: the server reads EOF."""
    seen = threading.Event()

    def wait_eof(conn: socket.socket) -> None:
        conn.settimeout(30)
        while conn.recv(4096):
            pass
        seen.set()

    with server(wait_eof) as port:
        async with AgentClient(agent.socket) as client:
            stream = await client.open_port(port)
            await stream.send(b"partial request")
            await stream.aclose()
            await anyio.to_thread.run_sync(seen.wait, 30)
            assert seen.is_set()
            with pytest.raises(anyio.ClosedResourceError):
                await stream.send(b"more")


async def test_a_reset_inside_is_an_io_error(agent: AgentProcess) -> None:
    def reset(conn: socket.socket) -> None:
        conn.recv(10)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        conn.close()  # RST

    with server(reset) as port:
        async with AgentClient(agent.socket) as client:
            stream = await client.open_port(port)
            try:
                await stream.send(b"hello")
                with pytest.raises(AgentOperationError) as info:
                    await read_all(stream)
                assert info.value.code == "io_error"
            finally:
                await stream.aclose()
            await client.ping()


async def test_the_frames_of_a_relay_on_the_wire(agent: AgentProcess) -> None:
    """On the raw wire: the agent's own frames for port.connect are head, data, end, res."""

    def greet(conn: socket.socket) -> None:
        conn.sendall(b"hi")

    with server(greet) as port:
        raw = await RawConnection.open(agent.socket)
        try:
            await raw.send({"t": "req", "id": 1, "op": "port.connect", "args": {"port": port}})
            kinds = []
            while True:
                header, payload = await raw.recv()
                kinds.append(header["t"])
                if header["t"] == "data":
                    assert header["ch"] == "port" and payload == b"hi"
                if header["t"] == "end":
                    await raw.send({"t": "end", "id": 1})
                if header["t"] in ("res", "err"):
                    break
            assert kinds == ["head", "data", "end", "res"]
        finally:
            await raw.aclose()
