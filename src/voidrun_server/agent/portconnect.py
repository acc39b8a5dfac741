"""``port.connect``: a TCP connection to a port inside the sandbox, relayed over the request.

The preview proxy's way into sandboxes whose loopback the host cannot enter (gVisor's netstack,
a microVM's guest kernel): the agent connects to ``127.0.0.1:port`` (``::1`` when that is
refused: a server bound to IPv6 loopback only), answers ``head {}`` once connected, then moves
bytes both ways as ``data`` frames until both directions have ended:

* the server's bytes go to the client as ``data "port"`` frames; its EOF is an ``end`` frame
  from the agent (a half-close: the client may go on sending);
* the client's ``data`` frames are written to the socket; its ``end`` shuts down the socket's
  write side (the server reads EOF and may still answer);
* once both ended: ``res {}``. A reset socket or a failed write ends the request with
  ``err io_error``; ``cancel`` closes the socket at once. Nothing refused: ``err port_closed``.

Memory is bounded by the protocol's windows, not by this module: a read from the socket waits
until the client granted room for it (so a client that stops reading stops the server inside
through TCP's own backpressure), and the next client chunk is taken only once the previous one
is written.
"""

from __future__ import annotations

import _socket
import errno
import os

from .args import bad
from .fdio import Fd
from .protocol import IO_ERROR, PORT_CLOSED, OpError, is_int
from .tasks import Task, wait

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, Optional, Tuple

    from .context import AgentContext
    from .stream import Stream

CHANNEL = "port"
LOOPBACKS = ((_socket.AF_INET, "127.0.0.1"), (_socket.AF_INET6, "::1"))
# Connect errors that mean "nothing there" (for ::1: IPv6 may be off inside).
REFUSED = frozenset({errno.ECONNREFUSED, errno.EADDRNOTAVAIL, errno.ENETUNREACH})


async def op_port_connect(
    ctx: AgentContext, stream: Stream, args: Dict[str, Any]
) -> Dict[str, Any]:
    port = args.get("port")
    if not is_int(port) or not 1 <= port <= 65535:
        raise bad("'port' must be an integer in 1..65535")
    sock, fd = await _connect(port)
    try:
        await stream.send_head({})
        pumps = [Task(_download(stream, fd)), Task(_upload(stream, sock, fd))]
        try:
            await wait(pumps, first_exception=True)
        finally:
            for pump in pumps:
                pump.cancel()
            await wait(pumps)
        for pump in pumps:
            pump.result()  # the first failure (OpError: err frame) ends the request
    finally:
        _close(sock, fd)
    return {}


async def _connect(port: int) -> Tuple[_socket.socket, Fd]:
    refused = ""
    for family, address in LOOPBACKS:
        try:
            sock = _socket.socket(family, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        except OSError as exc:  # no IPv6 in this kernel
            refused = refused or (exc.strerror or str(exc))
            continue
        fd: Optional[Fd] = None
        try:
            sock.setblocking(False)
            code = sock.connect_ex((address, port))
            fd = Fd(sock.fileno(), write=True)
            if code == errno.EINPROGRESS:
                fd.writable = False  # the edge that ends the connect has not come yet
                await fd.wait_writable()
                code = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
        except BaseException:
            _close(sock, fd)
            raise
        if code == 0:
            return sock, fd
        _close(sock, fd)
        if code in REFUSED:
            refused = refused or os.strerror(code)  # ::1 may be off inside: still "closed"
            continue
        raise OpError(IO_ERROR, f"connecting to port {port}: {os.strerror(code)}")
    raise OpError(PORT_CLOSED, f"nothing listens on port {port} ({refused})")


def _close(sock: _socket.socket, fd: Optional[Fd]) -> None:
    if fd is None:
        sock.close()
    else:
        fd.close()  # unregisters and closes the descriptor
        sock.detach()


async def _download(stream: Stream, fd: Fd) -> None:
    """The server's bytes to the client, read only as fast as the client grants room."""
    while True:
        room = await stream.wait_credit()
        try:
            data = await fd.read_some(room)
        except OSError as exc:
            raise OpError(IO_ERROR, f"the connection failed: {exc.strerror or exc}") from None
        if not data:
            await stream.send_end()
            return
        await stream.send_data(CHANNEL, data)


async def _upload(stream: Stream, sock: _socket.socket, fd: Fd) -> None:
    """The client's bytes to the server; its ``end`` shuts the socket's write side."""
    while True:
        chunk = await stream.receive()
        if chunk is None:
            try:
                sock.shutdown(_socket.SHUT_WR)
            except OSError:
                pass  # the server closed already
            return
        view = memoryview(chunk)
        while view:
            await fd.wait_writable()
            try:
                n = fd.write(view)
            except OSError as exc:
                raise OpError(IO_ERROR, f"the connection failed: {exc.strerror or exc}") from None
            view = view[n:]
