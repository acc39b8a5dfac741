"""Serving one character device (a virtio-serial port in a microVM) instead of a socket.

A port is one byte stream, opened once: the host side (QEMU's Unix socket chardev) is the one
client. The agent waits until the host is connected (the port stops reporting ``POLLHUP``),
serves that connection with the same multiplexer as a socket client (``connection.py``),
and when the host goes away (EOF) opens the port again and waits for the next host
connection: a restarted server reconnects and finds a fresh session. A terminal given as the
device (tests use a pty) is set raw first, so no line discipline touches the frames.

Waiting for a host costs nothing while idle: a port without a host reports ``POLLHUP`` at
once, so it cannot be waited on with ``poll``, but the guest's virtio_console driver sends
``SIGIO`` to the port's owner when the host connects (``O_ASYNC``). Each wait sleeps until
that signal, or a slow fallback poll (``ARMED_POLL``) should a signal be missed; where
``O_ASYNC`` is refused, it polls every ``poll`` seconds as before.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal

from . import log
from .connection import Connection
from .loop import get_loop
from .sync import Event

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .context import AgentContext

HOST_POLL = 0.02  # seconds between checks for a host connection
CONTROL_POLL = 0.1  # the same for a control port (rarely used: less idle work in the guest)
ARMED_POLL = 2.0  # the fallback check while SIGIO announces host connections


class _HostWatch:
    """One SIGIO handler for every port: any signal wakes every waiting port, which then
    looks at its own device again."""

    def __init__(self) -> None:
        self.changed = Event()
        self.handler = False

    def arm(self, fd: int, on: bool) -> bool:
        """Ask for (or stop) SIGIO on ``fd``'s host connection changes; False if refused."""
        try:
            if on and not self.handler:
                get_loop().add_signal_handler(signal.SIGIO, self.changed.set)
                self.handler = True
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            if on:
                fcntl.fcntl(fd, fcntl.F_SETOWN, os.getpid())
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_ASYNC if on else flags & ~os.O_ASYNC)
            return True
        except (OSError, ValueError, RuntimeError):
            return False

    async def wait_for_host(self, fd: int, stop: Event, poll: float) -> bool:
        """Until a host holds ``fd``'s other end (True) or ``stop`` is set (False)."""
        armed = self.arm(fd, True)
        try:
            while True:
                self.changed.clear()  # before looking: a signal from now on wakes the wait
                if host_connected(fd):
                    return True
                if stop.is_set():
                    return False
                await self.changed.wait(ARMED_POLL if armed else poll)
        finally:
            if armed:
                self.arm(fd, False)  # a session's own reads need no signals


_WATCH = _HostWatch()


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
            if not leftover and not await _WATCH.wait_for_host(fd, stop, poll):
                return
            log.info("host connected on %s", path)
            connection = Connection(ctx, os.dup(fd), rehello=True, inbox=leftover)
            await connection.serve()
            leftover = connection.leftover
            log.info("session on %s ended", path)
    finally:
        os.close(fd)
