"""Connecting to an agent's Unix socket without trusting what lies at its path."""

from __future__ import annotations

import errno
import os
import socket
import stat

import anyio
import anyio.abc

from ._errors import AgentConnectionError

RETRY_ERRNOS = frozenset({errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN})


async def connect_unix(path: str, patience: float, owner_uid: int | None = None) -> socket.socket:
    """Connect, retrying for ``patience`` seconds while the agent starts up (no socket yet, or
    nobody listening on it yet). Returns the connected, non-blocking socket."""
    delay = 0.005
    last: OSError | None = None
    try:
        with anyio.fail_after(patience):
            while True:
                try:
                    return await _connect_once(path, owner_uid)
                except OSError as exc:
                    if exc.errno not in RETRY_ERRNOS:
                        raise AgentConnectionError(
                            f"cannot connect to the agent at {path}: {exc}"
                        ) from exc
                    last = exc
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.1)
    except TimeoutError:
        raise AgentConnectionError(
            f"the agent at {path} did not accept a connection within {patience:g}s ({last})"
        ) from None


async def _connect_once(path: str, owner_uid: int | None) -> socket.socket:
    """Connect without ever following a symlink at the socket's name.

    The socket's directory is writable from inside the sandbox, so a hostile sandbox could swap
    the socket for a symlink to another Unix socket the server can reach. Opening the name with
    ``O_PATH | O_NOFOLLOW`` and connecting through ``/proc/self/fd`` pins the exact inode we
    checked; this also lifts the 108-byte ``sun_path`` limit.
    """
    parent, name = os.path.split(path)
    dir_fd = os.open(parent or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode) or (owner_uid is not None and st.st_uid != owner_uid):
            raise AgentConnectionError(
                f"refusing to connect: {path} is not a socket owned by uid {owner_uid}"
            )
        stream = await anyio.connect_unix(f"/proc/self/fd/{fd}")
        # The socket itself, for an asyncio transport (``_wire``); the wrapper is dropped
        # unclosed on purpose (closing it would close the socket).
        raw: socket.socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        return raw
    finally:
        os.close(fd)
