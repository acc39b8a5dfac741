"""PID-1 duties: reap every child, and hand exit statuses to whoever is waiting for them.

Inside its PID namespace the agent is init: every orphaned process is re-parented to it and
stays a zombie until the agent waits for it. A single ``waitpid(-1)`` loop reaps them all, so
no other code may call ``waitpid``: a second waiter would steal statuses. Code that starts a
process registers its pid here (synchronously, right after spawning it, before the loop can run
the SIGCHLD callback) and gets a future that resolves to the exit code.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Dict

log = logging.getLogger("voidrun_agent")

PR_SET_CHILD_SUBREAPER = 36


class Reaper:
    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._waiters: Dict[int, asyncio.Future[int]] = {}

    def install(self) -> None:
        self._loop.add_signal_handler(signal.SIGCHLD, self.reap)
        if os.getpid() != 1:
            become_subreaper()
        self.reap()  # children that exited before the handler existed

    def watch(self, pid: int) -> asyncio.Future[int]:
        """Future for ``pid``'s exit code (-signum when killed by a signal)."""
        fut: asyncio.Future[int] = self._loop.create_future()
        self._waiters[pid] = fut
        return fut

    def forget(self, pid: int) -> None:
        """Stop caring about ``pid``; it is still reaped, its status just goes nowhere."""
        self._waiters.pop(pid, None)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            fut = self._waiters.pop(pid, None)
            if fut is not None and not fut.done():
                fut.set_result(os.waitstatus_to_exitcode(status))


def become_subreaper() -> None:
    """Outside a PID namespace (development, tests), adopt orphans like init would.

    Without this a command's background children would be re-parented to the host's init and
    the agent could neither reap nor observe them, so behaviour would differ from production.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
    except (ImportError, OSError, AttributeError) as exc:
        log.warning("cannot become a child subreaper: %s", exc)


def exit_code(status: int) -> int:
    """Shell convention: a death by signal N reads as 128 + N."""
    return 128 - status if status < 0 else status
