"""The client end of a node's tunnel: one TCP connection that becomes an agent connection (or
a connection to a port inside the sandbox) after a one-line hello.

Wire: the caller sends ``VRTUNNEL <version> <token> <sandbox id> agent`` (or ``... port N``)
and a newline; the node answers ``OK`` or ``ERR <kind> <message>``, each one line of at most
:data:`MAX_LINE` bytes. After ``OK`` the socket carries the target's bytes, both ways, until
either side closes.
"""

from __future__ import annotations

import asyncio
import socket

import anyio

from ._errors import AgentConnectionError

VERSION = 1
MAGIC = "VRTUNNEL"
MAX_LINE = 512
# ERR kinds
AUTH, NOT_FOUND, CLOSED, UNAVAILABLE, BAD = "auth", "notfound", "closed", "unavailable", "bad"


class TunnelRefusedError(AgentConnectionError):
    """The node answered the hello with an error line."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(f"the node refused the tunnel ({kind}): {message}")


def hello(token: str, sandbox_id: str, target: str) -> bytes:
    return f"{MAGIC} {VERSION} {token} {sandbox_id} {target}\n".encode()


async def open_tunnel(
    host: str, port: int, token: str, sandbox_id: str, target: str, patience: float
) -> socket.socket:
    """Connect, say hello, read the answer; returns the connected, non-blocking socket."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        with anyio.fail_after(patience):
            await loop.sock_connect(sock, (host, port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_sendall(sock, hello(token, sandbox_id, target))
            line = await _read_line(loop, sock)
    except TimeoutError:
        sock.close()
        raise AgentConnectionError(
            f"the node tunnel at {host}:{port} did not answer within {patience:g}s"
        ) from None
    except OSError as exc:
        sock.close()
        raise AgentConnectionError(f"cannot reach the node tunnel at {host}:{port}: {exc}") from exc
    except BaseException:
        sock.close()
        raise
    if line != "OK":
        sock.close()
        kind, _, message = line.removeprefix("ERR ").partition(" ")
        raise TunnelRefusedError(kind or BAD, message or line)
    return sock


async def _read_line(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> str:
    """One byte at a time: nothing after the newline may be consumed (it is the target's)."""
    data = bytearray()
    while len(data) <= MAX_LINE:
        chunk = await loop.sock_recv(sock, 1)
        if not chunk:
            raise AgentConnectionError("the node closed the tunnel during the hello")
        if chunk == b"\n":
            return data.decode("utf-8", "replace")
        data += chunk
    raise AgentConnectionError("the node's tunnel answer is too long")
