"""cgroup v2: one directory per sandbox (modern systemd hosts).

``memory.max`` (and ``memory.swap.max`` = 0), ``cpu.max``, ``pids.max``, ``cgroup.freeze``,
``cgroup.kill``. Domain groups have no per-thread membership, so the spawning thread cannot
step inside as on v1 (that would need ``CLONE_INTO_CGROUP``, which ``subprocess`` does not
offer): the launcher attaches bwrap and its child after ``clone``, before releasing the child.
"""

from __future__ import annotations

import os
from pathlib import Path

from voidrun_server.drivers.base import SandboxStats
from voidrun_server.drivers.namespace.cgroups.base import (
    CFS_PERIOD_US,
    CgroupLimits,
    Cgroups,
    keyed_value,
    read_int,
    write_text,
)

__all__ = ["CgroupsV2"]

CONTROLLERS = ("memory", "cpu", "pids")


class CgroupsV2(Cgroups):
    version = 2

    def ensure_parent(self) -> None:
        root = self.mounts["unified"]
        enable = " ".join(f"+{c}" for c in CONTROLLERS)
        parent = root / self.parent
        if not parent.is_dir():
            write_text(root / "cgroup.subtree_control", enable)
            parent.mkdir(exist_ok=True)
        write_text(parent / "cgroup.subtree_control", enable)

    def _set_limits(self, paths: dict[str, str], limits: CgroupLimits) -> None:
        g = Path(paths["unified"])
        write_text(g / "memory.max", str(limits.mem_mb << 20))
        if (g / "memory.swap.max").exists():
            write_text(g / "memory.swap.max", "0")
        write_text(g / "cpu.max", f"{limits.cpu * CFS_PERIOD_US} {CFS_PERIOD_US}")
        write_text(g / "pids.max", str(limits.pids_max))

    def _request_freeze(self, paths: dict[str, str]) -> None:
        write_text(Path(paths["unified"]) / "cgroup.freeze", "1")

    def _frozen_now(self, paths: dict[str, str]) -> bool:
        return keyed_value(Path(paths["unified"]) / "cgroup.events", "frozen") == 1

    def thaw(self, paths: dict[str, str]) -> None:
        write_text(Path(paths["unified"]) / "cgroup.freeze", "0")

    def is_frozen(self, paths: dict[str, str]) -> bool:
        return self._frozen_now(paths)

    def kill_all(self, paths: dict[str, str], deadline: float) -> None:
        g = Path(paths["unified"])
        if not g.is_dir():
            return
        if (g / "cgroup.kill").exists():
            write_text(g / "cgroup.kill", "1")  # kills frozen tasks too
        else:  # kernels 5.2-5.13
            self.freeze(paths, deadline)
            try:
                for pid in self.procs(paths):
                    try:
                        os.kill(pid, 9)
                    except ProcessLookupError:
                        pass
            finally:
                self.thaw(paths)
        self.wait_empty(paths, deadline)

    def stats(self, paths: dict[str, str]) -> SandboxStats:
        g = Path(paths["unified"])
        usage_us = keyed_value(g / "cpu.stat", "usage_usec")
        limit = read_int(g / "memory.max")  # "max" parses as None
        return SandboxStats(
            memory_bytes=read_int(g / "memory.current"),
            memory_limit_bytes=limit,
            cpu_usage_ns=None if usage_us is None else usage_us * 1000,
            pids=read_int(g / "pids.current"),
            oom_kills=keyed_value(g / "memory.events", "oom_kill"),
        )
