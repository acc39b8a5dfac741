"""The per-sandbox cgroup interface shared by v1 and v2, and small cgroupfs file helpers.

Group paths are passed around as ``dict[str, str]`` (controller -> directory; v2 uses the single
key ``"unified"``) so the record on disk names exactly what to clean up, even if the
configuration changed between restarts. Every wait takes an absolute ``deadline``
(``time.monotonic()``) because these functions run in worker threads that a cancellation
cannot interrupt.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from voidrun_server.drivers.base import DriverError, SandboxStats

__all__ = ["CFS_PERIOD_US", "CgroupLimits", "Cgroups"]

CFS_PERIOD_US = 100_000
POLL_INTERVAL = 0.0005


@dataclass(frozen=True)
class CgroupLimits:
    cpu: int
    mem_mb: int
    pids_max: int


def write_text(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def read_text(path: Path) -> str:
    with open(path) as f:
        return f.read()


def read_int(path: Path) -> int | None:
    try:
        return int(read_text(path).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def keyed_value(path: Path, key: str) -> int | None:
    """Value of ``key`` in a flat-keyed file such as memory.events or oom_control."""
    try:
        for line in read_text(path).splitlines():
            k, _, v = line.partition(" ")
            if k == key:
                return int(v)
    except (OSError, ValueError):
        pass
    return None


def rmdir_retry(path: Path, deadline: float) -> None:
    """Remove an (emptied) group; EBUSY means a dying task is still leaving, so retry."""
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise DriverError(f"cannot remove cgroup {path}", str(exc)) from exc
            time.sleep(POLL_INTERVAL)


class Cgroups:
    """A cgroup hierarchy (v1 or v2) with one group per sandbox under ``parent``."""

    version: int

    def __init__(self, mounts: dict[str, Path], parent: str) -> None:
        self.mounts = mounts
        self.parent = parent.strip("/")

    # -- layout -----------------------------------------------------------------------------

    def paths_for(self, sandbox_id: str) -> dict[str, str]:
        return {c: str(m / self.parent / sandbox_id) for c, m in self.mounts.items()}

    def ensure_parent(self) -> None:
        for mount in self.mounts.values():
            (mount / self.parent).mkdir(exist_ok=True)

    # -- lifecycle --------------------------------------------------------------------------

    def create(self, sandbox_id: str, limits: CgroupLimits) -> dict[str, str]:
        """Create the sandbox's group(s) with limits; caller removes them on failure."""
        self.ensure_parent()
        paths = self.paths_for(sandbox_id)
        for p in paths.values():
            os.mkdir(p)
        self._set_limits(paths, limits)
        return paths

    @contextlib.contextmanager
    def born_inside(self, paths: dict[str, str]) -> Iterator[bool]:
        """While active, processes the *calling thread* spawns start inside ``paths``.

        Yields False when the hierarchy cannot do that; the caller must then :meth:`attach`.
        """
        yield False

    def join_files(self, paths: dict[str, str]) -> list[str]:
        """Files a process writes ``0`` to in order to move itself into ``paths``."""
        return [str(Path(p) / "cgroup.procs") for p in paths.values()]

    def attach(self, paths: dict[str, str], pid: int) -> None:
        for p in paths.values():
            write_text(Path(p) / "cgroup.procs", str(pid))

    def procs(self, paths: dict[str, str]) -> set[int]:
        pids: set[int] = set()
        for p in paths.values():
            try:
                pids.update(int(x) for x in read_text(Path(p) / "cgroup.procs").split())
            except FileNotFoundError:
                continue
        return pids

    def exists(self, paths: dict[str, str]) -> bool:
        return any(os.path.isdir(p) for p in paths.values())

    def remove(self, paths: dict[str, str], deadline: float) -> None:
        """Kill whatever is left, then remove every directory (missing ones are fine)."""
        if self.procs(paths):
            self.kill_all(paths, deadline)
        for p in paths.values():
            rmdir_retry(Path(p), deadline)

    def wait_empty(self, paths: dict[str, str], deadline: float) -> None:
        while self.procs(paths):
            if time.monotonic() > deadline:
                raise DriverError("processes did not exit after SIGKILL", str(self.procs(paths)))
            time.sleep(POLL_INTERVAL)

    # -- per-version ------------------------------------------------------------------------

    def set_limits(self, paths: dict[str, str], limits: CgroupLimits) -> None:
        """Change the limits of an existing sandbox's cgroups."""
        self._set_limits(paths, limits)

    def _set_limits(self, paths: dict[str, str], limits: CgroupLimits) -> None:
        raise NotImplementedError

    def freeze(self, paths: dict[str, str], deadline: float) -> None:
        """Freeze the group and wait until the kernel reports every task frozen."""
        self._request_freeze(paths)
        while not self._frozen_now(paths):  # still freezing while tasks finish their syscalls
            if time.monotonic() > deadline:
                self.thaw(paths)
                raise DriverError("sandbox did not freeze in time (a task is stuck in D state)")
            time.sleep(POLL_INTERVAL)

    def _request_freeze(self, paths: dict[str, str]) -> None:
        raise NotImplementedError

    def _frozen_now(self, paths: dict[str, str]) -> bool:
        raise NotImplementedError

    def thaw(self, paths: dict[str, str]) -> None:
        raise NotImplementedError

    def is_frozen(self, paths: dict[str, str]) -> bool:
        raise NotImplementedError

    def kill_all(self, paths: dict[str, str], deadline: float) -> None:
        """SIGKILL every process in the group and wait until it is empty."""
        raise NotImplementedError

    def stats(self, paths: dict[str, str]) -> SandboxStats:
        raise NotImplementedError
