"""cgroup v1: one directory per controller (the hybrid layout of Debian 12 / this CI host).

Limits: ``memory.limit_in_bytes`` (and ``memory.memsw.limit_in_bytes`` = the same, so no swap),
``cpu.cfs_quota_us``, ``pids.max``; pause = ``freezer.state``. cpuacct (when mounted
separately) only feeds stats. There is no ``cgroup.kill``: kill-all freezes the group first, so
nothing can fork or exit (and free its pid for reuse) while we SIGKILL every listed pid, then
thaws it so the signals land.

Placing the sandbox: moving a process into a cgroup (``cgroup.procs``) takes a global percpu
rwsem for writing, which costs an RCU grace period when no migration happened recently: 6.7 ms
p50 (14 ms max) measured here, a quarter of a create. A thread that moves *itself* (writing
``0`` to ``tasks``) skips that lock (0.6 ms for five hierarchies). So the spawning worker
thread steps into the sandbox's groups, spawns bwrap (which, with all its children, is born
there), and steps back out: :meth:`CgroupsV1.born_inside`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from voidrun_server.drivers.base import SandboxStats
from voidrun_server.drivers.namespace.cgroups.base import (
    CFS_PERIOD_US,
    CgroupLimits,
    Cgroups,
    keyed_value,
    read_int,
    read_text,
    write_text,
)

__all__ = ["CgroupsV1"]

REQUIRED = ("memory", "cpu", "pids", "freezer")
OPTIONAL = ("cpuacct",)


class CgroupsV1(Cgroups):
    version = 1

    def join_files(self, paths: dict[str, str]) -> list[str]:
        return [str(Path(p) / "tasks") for p in paths.values()]  # a thread: no global lock

    @contextlib.contextmanager
    def born_inside(self, paths: dict[str, str]) -> Iterator[bool]:
        original: dict[str, str] = {}
        with open("/proc/thread-self/cgroup") as f:
            for line in f:
                _, names, path = line.rstrip("\n").split(":", 2)
                for name in names.split(","):
                    original[name] = path
        moved: list[str] = []
        try:
            for controller, path in paths.items():
                write_text(Path(path) / "tasks", "0")  # "0" = this thread: no global lock
                moved.append(controller)
            yield True
        finally:
            for controller in moved:
                home = self.mounts[controller] / original.get(controller, "/").lstrip("/")
                try:
                    write_text(home / "tasks", "0")
                except OSError:  # our old group vanished: the root always exists
                    write_text(self.mounts[controller] / "tasks", "0")

    def _set_limits(self, paths: dict[str, str], limits: CgroupLimits) -> None:
        mem = Path(paths["memory"])
        limit = limits.mem_mb << 20
        memsw = mem / "memory.memsw.limit_in_bytes"
        # The kernel keeps memsw >= limit at every step: raise memsw first when growing,
        # lower the limit first when shrinking.
        files = [mem / "memory.limit_in_bytes"]
        if memsw.exists():
            grow = limit > int(read_text(mem / "memory.limit_in_bytes"))
            files = [memsw, files[0]] if grow else [files[0], memsw]
        for path in files:
            write_text(path, str(limit))
        cpu = Path(paths["cpu"])
        # Every bandwidth write walks all the host's cpu cgroups (0.5 ms beside 1,000 sandboxes),
        # and a new group already has the kernel's default period, which is ours.
        period = cpu / "cpu.cfs_period_us"
        if int(read_text(period)) != CFS_PERIOD_US:
            write_text(period, str(CFS_PERIOD_US))
        write_text(cpu / "cpu.cfs_quota_us", str(limits.cpu * CFS_PERIOD_US))
        write_text(Path(paths["pids"]) / "pids.max", str(limits.pids_max))

    def _request_freeze(self, paths: dict[str, str]) -> None:
        write_text(Path(paths["freezer"]) / "freezer.state", "FROZEN")

    def _frozen_now(self, paths: dict[str, str]) -> bool:
        return read_text(Path(paths["freezer"]) / "freezer.state").strip() == "FROZEN"

    def thaw(self, paths: dict[str, str]) -> None:
        write_text(Path(paths["freezer"]) / "freezer.state", "THAWED")

    def is_frozen(self, paths: dict[str, str]) -> bool:
        try:
            return self._frozen_now(paths)
        except FileNotFoundError:
            return False

    def kill_all(self, paths: dict[str, str], deadline: float) -> None:
        if not os.path.isdir(paths["freezer"]):
            return
        self.freeze(paths, deadline)
        try:
            for pid in self.procs(paths):
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
        finally:
            self.thaw(paths)  # frozen tasks only act on SIGKILL once thawed
        self.wait_empty(paths, deadline)

    def stats(self, paths: dict[str, str]) -> SandboxStats:
        mem = Path(paths["memory"])
        cpuacct = paths.get("cpuacct")
        return SandboxStats(
            memory_bytes=read_int(mem / "memory.usage_in_bytes"),
            memory_limit_bytes=read_int(mem / "memory.limit_in_bytes"),
            cpu_usage_ns=read_int(Path(cpuacct) / "cpuacct.usage") if cpuacct else None,
            pids=read_int(Path(paths["pids"]) / "pids.current"),
            oom_kills=keyed_value(mem / "memory.oom_control", "oom_kill"),
        )
