"""Serving one character device (a virtio-serial port in a microVM) instead of a socket.

A port is one byte stream, opened once: the host side (QEMU's Unix socket chardev) is the one
client. The agent waits until the host is connected (the port stops reporting ``POLLHUP``),
serves that connection with the same multiplexer as a socket client (``connection.py``),
and when the host goes away (EOF) opens the port again and waits for the next host
connection: a restarted server reconnects and finds a fresh session. A terminal given as the
device (tests use a pty) is set raw first, so no line discipline touches the frames.
"""

from __future__ import annotations

import os
import select

from . import log
from .connection import Connection
from .tasks import sleep

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .context import AgentContext
    from .sync import Event

HOST_POLL = 0.02  # seconds between checks for a host connection
CONTROL_POLL = 0.1  # the same for a control port (rarely used: less idle work in the guest)


def open_port(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC | os.O_NONBLOCK)
    if os.isatty(fd):
        import tty

        tty.setraw(fd)
    return fd


def host_connected(fd: int) -> bool:
    """False while nobody holds the host end (the port reports a hang-up)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLOUT)
    events = poller.poll(0)
    return not any(mask & select.POLLHUP for _, mask in events)


async def serve_port(ctx: AgentContext, path: str, stop: Event, poll: float = HOST_POLL) -> None:
    """Serve host connections on the device at ``path``, one after another, until ``stop``.

    The port stays open throughout (opening it again would discard bytes a new host
    connection already sent); each session gets its own duplicate of the descriptor. A host
    that reconnects so fast that the agent never saw the hang-up is recognised by its hello
    (``Connection(rehello=True)``)."""
    fd = open_port(path)
    try:
        leftover = b""
        while not stop.is_set():
            if not leftover:
                while not host_connected(fd):
                    if stop.is_set():
                        return
                    await sleep(poll)
            log.info("host connected on %s", path)
            connection = Connection(ctx, os.dup(fd), rehello=True, inbox=leftover)
            await connection.serve()
            leftover = connection.leftover
            log.info("session on %s ended", path)
    finally:
        os.close(fd)
