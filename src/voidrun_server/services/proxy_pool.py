"""Keep-alive HTTP/1.1 connections into sandboxes for the preview proxy, per sandbox and port.

Each connection is httpcore's ``AsyncHTTP11Connection`` (h11: strict parsing of whatever a
server inside sends) over a socket opened inside the sandbox (``proxy_transport.py``). The pool
itself is a dict of idle lists, because httpcore's general pool costs more per request than
the rest of a small exchange (a scan of every connection, locks, events and cancel shields per
request) and cannot drop one sandbox's connections:

* A request takes the newest idle connection of its sandbox and port that is neither expired
  nor readable (an idle connection that is readable was closed by the server), else opens one.
* A response closed after its complete body gives its connection back (at most
  ``IDLE_PER_PORT`` per sandbox and port, ``IDLE_TOTAL`` in all; beyond, it is closed); one
  closed early closes its connection.
* ``forget(sandbox)`` closes that sandbox's idle connections (it stopped, was paused, deleted
  or its ports changed); idle connections expire after ``keepalive`` seconds, swept at most
  every ``SWEEP_EVERY`` seconds when a connection comes back.

Connections in use are not counted here: ``ConnectionLimits`` (``proxy.py``) bounds them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import httpcore

__all__ = ["UpstreamPool"]

IDLE_PER_PORT = 32
IDLE_TOTAL = 512
SWEEP_EVERY = 5.0
READ_BYTES = 128 * 1024  # per read from the sandbox (httpcore's default: 64 KiB)

Connect = Callable[[str, int], Awaitable[httpcore.AsyncNetworkStream]]
Key = tuple[str, int]


class _Connection(httpcore.AsyncHTTP11Connection):
    READ_NUM_BYTES = READ_BYTES


class _PooledStream:
    """The response body; closing it gives the connection back (or closes it)."""

    def __init__(self, body: Any, pool: UpstreamPool, key: Key, conn: _Connection) -> None:
        self._body = body
        self._pool = pool
        self._key = key
        self._conn = conn

    def __aiter__(self) -> AsyncIterator[bytes]:
        iterator: AsyncIterator[bytes] = self._body.__aiter__()
        return iterator

    async def aclose(self) -> None:
        await self._body.aclose()  # h11 decides: idle again (body complete) or closed
        await self._pool.give_back(self._key, self._conn)


class UpstreamPool:
    def __init__(self, connect: Connect, keepalive: float) -> None:
        self._connect = connect
        self.keepalive = keepalive
        self._idle: dict[str, dict[int, list[_Connection]]] = {}
        self._count = 0
        self._swept = time.monotonic()

    async def request(
        self, sandbox_id: str, port: int, request: httpcore.Request
    ) -> httpcore.Response:
        """Send ``request`` to that port; returns at the response head. Its ``stream`` must be
        closed (``Response.aclose``) to give the connection back."""
        key = (sandbox_id, port)
        while True:
            conn = await self._take(key)
            if conn is None:
                stream = await self._connect(sandbox_id, port)
                conn = _Connection(request.url.origin, stream, keepalive_expiry=self.keepalive)
            try:
                response = await conn.handle_async_request(request)
            except httpcore.ConnectionNotAvailable:  # closed between the check and the use
                continue
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await conn.aclose()
                raise
            response.stream = _PooledStream(response.stream, self, key, conn)
            return response

    async def _take(self, key: Key) -> _Connection | None:
        ports = self._idle.get(key[0])
        idle = ports.get(key[1]) if ports else None
        while idle:
            conn = idle.pop()
            self._count -= 1
            if conn.is_idle() and not conn.has_expired():
                return conn
            await conn.aclose()
        return None

    async def give_back(self, key: Key, conn: _Connection) -> None:
        if not conn.is_idle():
            await conn.aclose()  # h11 closed it already unless the exchange ended cleanly
            return
        ports = self._idle.setdefault(key[0], {})
        idle = ports.setdefault(key[1], [])
        if len(idle) >= IDLE_PER_PORT or self._count >= IDLE_TOTAL:
            await conn.aclose()
        else:
            idle.append(conn)
            self._count += 1
        now = time.monotonic()
        if now - self._swept >= SWEEP_EVERY:
            self._swept = now
            await self._sweep()

    async def _sweep(self) -> None:
        """Close idle connections that expired or that their server closed."""
        dropped: list[_Connection] = []
        for sandbox_id, ports in list(self._idle.items()):  # no await until the lists are done
            for port, idle in list(ports.items()):
                kept = [c for c in idle if c.is_idle() and not c.has_expired()]
                dropped += [c for c in idle if c not in kept]
                idle[:] = kept
                if not kept:
                    del ports[port]
            if not ports:
                del self._idle[sandbox_id]
        self._count -= len(dropped)
        for conn in dropped:
            await conn.aclose()

    async def forget(self, sandbox_id: str) -> None:
        """Close every idle connection into that sandbox."""
        ports = self._idle.pop(sandbox_id, {})
        for idle in ports.values():
            closing = idle[:]
            idle.clear()  # a ``_take`` under way sees an empty list, not these
            self._count -= len(closing)
            for conn in closing:
                await conn.aclose()

    def idle_count(self, sandbox_id: str | None = None) -> int:
        if sandbox_id is None:
            return self._count
        return sum(len(idle) for idle in self._idle.get(sandbox_id, {}).values())

    async def aclose(self) -> None:
        for sandbox_id in list(self._idle):
            await self.forget(sandbox_id)
