"""One process at a time owns a data dir's host state: ``<data_dir>/server.lock``.

``voidrun-server serve`` holds an exclusive ``flock`` on it for its whole life, and so does
``voidrun-server purge`` while it tears sandboxes down: a second server on the same data dir
(it would destroy the first one's sandboxes as orphans) or a purge under a running server is
refused with the holder's pid and command. The kernel drops the lock when its process dies,
however it dies, so a SIGKILLed server leaves no stale lock behind; the file itself (pid and
command, for the message) stays and means nothing on its own. The descriptor is close-on-exec:
sandboxes and the resolver, which outlive a server, never inherit it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from .errors import ConflictError

__all__ = ["LOCK_NAME", "hold"]

LOCK_NAME = "server.lock"


def hold(data_dir: Path, command: str) -> int:
    """Take the lock (creating the data dir if needed) and return its descriptor: closing it,
    or the process ending, releases it. Raises ConflictError naming the current holder."""
    data_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        who = _read(fd)
        os.close(fd)
        raise ConflictError(
            f"data dir {data_dir} is in use", f"by {who or 'another process'}"
        ) from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}: {command}\n".encode(), 0)
    return fd


def _read(fd: int) -> str:
    with contextlib.suppress(OSError):
        return os.pread(fd, 200, 0).decode(errors="replace").strip()
    return ""
