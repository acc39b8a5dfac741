"""Process identity that survives a server restart: (pid, start time).

A pid alone is not an identity: after the sandbox dies the kernel may hand the same number to an
unrelated process, and a restarted server that signals it would kill a stranger. The start time
(field 22 of ``/proc/<pid>/stat``, in clock ticks since boot) never repeats for one pid within a
boot, so the pair identifies one process. Signals go through a pidfd opened *before* the identity
check, which closes the remaining window between "check" and "kill".
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

__all__ = ["ProcessRef", "read_start_time"]


def _read_stat(pid: int) -> tuple[bytes, int] | None:
    """(state letter, start time) of ``pid``, or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after the *last* ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    return fields[0], int(fields[19])  # fields[0] is field 3 (state), [19] is field 22


def read_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None when it does not exist."""
    stat = _read_stat(pid)
    return None if stat is None else stat[1]


@dataclass(frozen=True)
class ProcessRef:
    pid: int
    start_time: int

    @classmethod
    def of(cls, pid: int) -> ProcessRef | None:
        start = read_start_time(pid)
        return None if start is None else cls(pid, start)

    def alive(self) -> bool:
        """True while this very process exists and has not exited (zombies count as dead)."""
        stat = _read_stat(self.pid)
        return stat is not None and stat[1] == self.start_time and stat[0] not in (b"Z", b"X")

    def kill(self, sig: int = signal.SIGKILL) -> bool:
        """Send ``sig`` if this is still the same process; returns whether it was sent."""
        try:
            pidfd = os.pidfd_open(self.pid)
        except (ProcessLookupError, OSError):
            return False
        try:
            if read_start_time(self.pid) != self.start_time:
                return False
            signal.pidfd_send_signal(pidfd, sig)
            return True
        except ProcessLookupError:
            return False
        finally:
            os.close(pidfd)

    def to_json(self) -> dict[str, int]:
        return {"pid": self.pid, "start_time": self.start_time}

    @classmethod
    def from_json(cls, data: object) -> ProcessRef | None:
        if not isinstance(data, dict):
            return None
        pid, start = data.get("pid"), data.get("start_time")
        if isinstance(pid, int) and isinstance(start, int):
            return cls(pid, start)
        return None
