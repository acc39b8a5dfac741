"""PID-1 duties: reap every child, and hand exit statuses to whoever is waiting for them.

Inside its PID namespace the agent is init: every orphaned process is re-parented to it and
stays a zombie until the agent waits for it. A single ``waitpid(-1)`` loop reaps them all, so
no other code may call ``waitpid``: a second waiter would steal statuses. Code that starts a
process registers its pid here (synchronously, right after spawning it, before the loop can run
the SIGCHLD callback) and gets a future that resolves to the exit code.
"""

from __future__ import annotations

import os

from . import log
from .futures import Future
from .loop import get_loop

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
else:
    import _signal

PR_SET_CHILD_SUBREAPER = 36


class Reaper:
    def __init__(self) -> None:
        self._waiters: dict[int, Future[int]] = {}
        # Outside a PID namespace (development, tests) the agent adopts orphans like init
        # would, from its first child on (ctypes is a visible part of start-up).
        self._adopting = os.getpid() == 1

    def install(self) -> None:
        get_loop().add_signal_handler(_signal.SIGCHLD, self.reap)
        self.reap()  # children that exited before the handler existed

    def watch(self, pid: int) -> Future[int]:
        """Future for ``pid``'s exit code (-signum when killed by a signal)."""
        fut: Future[int] = Future()
        self._waiters[pid] = fut
        return fut

    def adopt_orphans(self) -> None:
        """Call before starting a child: its orphans must come to the agent, not to the host's
        init (where they could be neither reaped nor observed)."""
        if not self._adopting:
            self._adopting = True
            become_subreaper()

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
