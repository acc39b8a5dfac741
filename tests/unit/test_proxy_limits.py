"""The preview proxy's connection limits and its idle-connection pool, without sandboxes."""

from __future__ import annotations

import asyncio
import socket

import httpcore
import pytest

from voidrun_server.errors import ServiceUnavailableError, TooManyConnectionsError
from voidrun_server.services.proxy import ConnectionLimits, Target
from voidrun_server.services.proxy_pool import UpstreamPool
from voidrun_server.services.proxy_transport import SandboxNetwork


def target(sandbox: str, org: str) -> Target:
    return Target(sandbox_id=sandbox, org_id=org, port=8000, public=False)


def test_limits_per_sandbox_per_org_and_in_all() -> None:
    limits = ConnectionLimits(per_sandbox=2, per_org=3, total=4)
    with limits.hold(target("a", "x")), limits.hold(target("a", "x")):
        with pytest.raises(TooManyConnectionsError, match="per sandbox"):
            with limits.hold(target("a", "x")):
                pass
        with limits.hold(target("b", "x")):
            with pytest.raises(TooManyConnectionsError, match="per org"):
                with limits.hold(target("c", "x")):
                    pass
            with limits.hold(target("d", "y")):  # 4 open: the server's limit
                with pytest.raises(ServiceUnavailableError, match="on this server") as full:
                    with limits.hold(target("e", "z")):
                        pass
                assert "at most 4" in str(full.value.details)
    assert limits.open == 0
    with limits.hold(target("e", "z")):  # every slot came back
        assert limits.open == 1


# -- the keep-alive pool, against a loopback server made here ---------------------------------


class Upstream:
    """HTTP/1.1 keep-alive on loopback: answers ``ok`` to each request; counts connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def close(self) -> None:
        """Every server-side connection closed and finished before the test's loop ends (a
        StreamWriter collected after that warns, failing whichever test is running then)."""
        for writer in self.writers:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in self.writers), return_exceptions=True)


async def pool_and_upstream() -> tuple[UpstreamPool, Upstream, asyncio.Server]:
    upstream = Upstream()
    listener = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]

    async def open_port(sandbox_id: str, _port: int, within: float) -> socket.socket:
        sock = socket.socket()
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        return sock

    return UpstreamPool(SandboxNetwork(open_port, 5).connect, 30), upstream, listener


async def get(pool: UpstreamPool, sandbox: str, port: int = 1) -> bytes:
    url = httpcore.URL(scheme=b"http", host=sandbox.encode(), port=port, target=b"/")
    request = httpcore.Request(b"GET", url, headers=[(b"host", b"x")])
    response = await pool.request(sandbox, port, request)
    body = b"".join([chunk async for chunk in response.stream])  # type: ignore[union-attr]
    await response.aclose()
    return body


async def test_pool_reuses_closes_and_forgets() -> None:
    pool, upstream, listener = await pool_and_upstream()
    async with listener:
        assert [await get(pool, "a") for _ in range(3)] == [b"ok"] * 3
        assert upstream.connections == 1 and pool.idle_count("a") == 1  # kept alive, reused
        await get(pool, "b")
        assert upstream.connections == 2  # another sandbox: its own connection
        upstream.writers[0].close()  # the server closes the idle one of "a"
        await asyncio.sleep(0.1)
        assert await get(pool, "a") == b"ok"
        assert upstream.connections == 3  # not reused once closed
        await pool.forget("a")
        assert pool.idle_count("a") == 0 and pool.idle_count() == 1
        await pool.aclose()
        assert pool.idle_count() == 0
        await upstream.close()
