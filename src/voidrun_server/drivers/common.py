"""What every driver does the same way: checking a spec, bounding an operation by a deadline,
one lock per sandbox, and waiting for a new sandbox's agent to accept connections."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import anyio

from voidrun_server.drivers.base import DriverError, DriverTimeoutError, SandboxSpec

__all__ = ["SandboxLocks", "check_hostname", "operation", "validate_spec", "wait_for_agent"]

SANDBOX_ID = re.compile(r"^[0-9a-f]{24}$")
HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def check_hostname(hostname: str) -> None:
    if not HOSTNAME.match(hostname):
        raise DriverError("invalid hostname", f"{hostname!r} is not a DNS-1123 label")


def validate_spec(spec: SandboxSpec, *, min_mem_mb: int = 16) -> None:
    """The checks every driver makes before it builds anything (the services layer checked
    the request already: these guard the driver's own invariants)."""
    if not SANDBOX_ID.match(spec.sandbox_id):
        raise DriverError("invalid sandbox id", "expected 24 lowercase hex digits")
    check_hostname(spec.hostname)
    if spec.cpu < 1 or spec.mem_mb < min_mem_mb or spec.disk_mb < 32:
        raise DriverError(
            "limits too small", f"need cpu >= 1, mem_mb >= {min_mem_mb}, disk_mb >= 32"
        )
    for key in spec.env:
        if not key or "=" in key or "\0" in key or "\n" in key:
            raise DriverError("invalid environment variable name", repr(key))


@contextlib.contextmanager
def operation(what: str, seconds: float) -> Iterator[float]:
    """``anyio.fail_after`` that yields the absolute monotonic deadline for worker threads,
    and turns timeouts and host errors into the driver's exception tree."""
    try:
        with anyio.fail_after(seconds):
            yield time.monotonic() + seconds
    except TimeoutError as exc:
        raise DriverTimeoutError(f"{what} timed out", f"after {seconds:.1f}s") from exc
    except OSError as exc:
        raise DriverError(f"{what} failed", str(exc)) from exc


class SandboxLocks:
    """One lock per sandbox, serialising a driver's operations on it; dropped when the
    sandbox is destroyed (unless someone waits on it)."""

    def __init__(self) -> None:
        self._locks: dict[str, anyio.Lock] = {}

    def __call__(self, sandbox_id: str) -> anyio.Lock:
        return self._locks.setdefault(sandbox_id, anyio.Lock())

    def forget(self, sandbox_id: str) -> None:
        lock = self._locks.get(sandbox_id)
        if lock is not None and not lock.locked() and not lock.statistics().tasks_waiting:
            del self._locks[sandbox_id]

    def all(self) -> list[anyio.Lock]:
        return list(self._locks.values())


async def wait_for_agent(
    wait: Callable[[], Awaitable[None]],
    *,
    seconds: float,
    socket: Path | str,
    log_tail: Callable[[], str],
) -> None:
    """Run ``wait`` (the driver's own readiness poll) for at most ``seconds``; a timeout or
    a failure carries the tail of the sandbox's log, which says why its agent did not come."""
    try:
        with anyio.fail_after(seconds):
            await wait()
    except TimeoutError as exc:
        tail = await anyio.to_thread.run_sync(log_tail)
        raise DriverTimeoutError(
            "the agent did not accept connections in time",
            tail or f"nothing listened on {socket} after {seconds}s",
        ) from exc
    except DriverError as exc:
        tail = await anyio.to_thread.run_sync(log_tail)
        raise DriverError(exc.message, tail or exc.details) from exc
