"""Connecting to the agent's socket safely, and waiting until it accepts.

The socket lives in ``<run>/``, which is bind-mounted into the sandbox and writable by its root.
A hostile sandbox can therefore replace ``agent.sock`` with a symlink to any host socket (the
server's own, a database, another sandbox's agent) and a naive ``connect(path)`` by the server
would follow it. So we open the entry itself with ``O_PATH | O_NOFOLLOW``, require a socket
owned by the sandbox's root uid, and connect through ``/proc/self/fd/<fd>``, which names exactly
that inode. That path is also short, which sidesteps the 108-byte ``sun_path`` limit for deep
state directories.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path

import anyio

from voidrun_server.drivers.base import DriverError

__all__ = ["AgentNotReady", "connect_agent_socket", "wait_until_ready"]


class AgentNotReady(Exception):
    """The socket does not exist yet, or nothing listens on it yet."""


def connect_agent_socket(path: Path, *, owner_uid: int, blocking: bool = True) -> socket.socket:
    """A connected Unix stream socket to the agent at ``path`` (never through a symlink).

    Raises :class:`AgentNotReady` while the socket is missing or refuses connections, and
    :class:`DriverError` when the entry is not a socket owned by ``owner_uid``.
    """
    try:
        dir_fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise AgentNotReady(str(exc)) from exc
    try:
        try:
            fd = os.open(path.name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError as exc:
            raise AgentNotReady(str(exc)) from exc
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != owner_uid:
            raise DriverError(
                "refusing to connect: the agent socket was replaced",
                f"{path} is not a socket owned by uid {owner_uid}",
            )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)  # AF_UNIX connect never waits; EAGAIN = backlog full
            try:
                sock.connect(f"/proc/self/fd/{fd}")
            except (ConnectionRefusedError, FileNotFoundError, BlockingIOError) as exc:
                raise AgentNotReady(str(exc)) from exc
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    raise AgentNotReady(str(exc)) from exc
                raise
            sock.setblocking(blocking)
            return sock
        except BaseException:
            sock.close()
            raise
    finally:
        os.close(fd)


async def wait_until_ready(path: Path, *, owner_uid: int, alive: Callable[[], bool]) -> None:
    """Poll until the agent accepts a connection; fail fast if the sandbox dies meanwhile.

    ``alive`` returns False once the sandbox's pid 1 is gone. The caller bounds the wait with
    ``anyio.fail_after``. Polls every 1 ms for the first 50 ms (an agent typically needs
    15-30 ms), then backs off to 10 ms: each poll is an open, a stat and a connect, and the
    polling adds well under 1 ms to a typical create.
    """
    start = time.monotonic()
    interval = 0.001
    while True:
        try:
            connect_agent_socket(path, owner_uid=owner_uid).close()
            return
        except AgentNotReady:
            pass
        if not alive():
            raise DriverError("the sandbox exited before its agent became ready")
        if time.monotonic() - start > 0.05:
            interval = min(0.01, interval * 2)
        await anyio.sleep(interval)
