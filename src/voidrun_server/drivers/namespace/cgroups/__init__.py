"""One cgroup per sandbox, on cgroup v1 or v2, chosen at runtime.

The kernel enforces the sandbox's memory, CPU and process limits and freezes it for pause, so a
sandbox cannot exceed them whatever runs inside. The server owns one parent group
(``<cgroup_parent>``, default ``voidrun``) at the root of each hierarchy and one child per
sandbox (``voidrun/<id>``). Groups sit at the root rather than under the server's own group so
a service manager that kills the server's group on restart leaves sandboxes alone, and so cgroup
v2's "no processes in inner groups" rule never hits the server.

The hierarchy that holds the memory controller decides the version: v1 (``v1.py``; legacy
and hybrid hosts such as this project's CI machine, where cgroup2 holds only hugetlb) or v2
(``v2.py``). Both implement the small interface in ``base.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from voidrun_server.drivers.base import DriverUnavailableError
from voidrun_server.drivers.namespace.cgroups.base import CgroupLimits, Cgroups, read_text
from voidrun_server.drivers.namespace.cgroups.v1 import OPTIONAL as V1_OPTIONAL
from voidrun_server.drivers.namespace.cgroups.v1 import REQUIRED as V1_REQUIRED
from voidrun_server.drivers.namespace.cgroups.v1 import CgroupsV1
from voidrun_server.drivers.namespace.cgroups.v2 import CONTROLLERS as V2_CONTROLLERS
from voidrun_server.drivers.namespace.cgroups.v2 import CgroupsV2

__all__ = ["CgroupLimits", "Cgroups", "CgroupsV1", "CgroupsV2", "cgroup_mounts", "detect_cgroups"]


def cgroup_mounts(mountinfo: Iterable[str]) -> tuple[dict[str, Path], Path | None]:
    """v1 controller -> mount point, and the cgroup2 mount point, from /proc/self/mountinfo."""
    v1: dict[str, Path] = {}
    v2: Path | None = None
    for line in mountinfo:
        pre, _, post = line.partition(" - ")
        fields, post_fields = pre.split(), post.split()
        if len(fields) < 5 or len(post_fields) < 3:
            continue
        mount_point, fstype, options = Path(fields[4]), post_fields[0], post_fields[2]
        if fstype == "cgroup2":
            v2 = mount_point
        elif fstype == "cgroup":
            for opt in options.split(","):
                if opt in V1_REQUIRED + V1_OPTIONAL:
                    v1.setdefault(opt, mount_point)
    return v1, v2


def detect_cgroups(parent: str) -> Cgroups:
    """The hierarchy that holds the memory controller decides: v1 (legacy/hybrid) or v2."""
    with open("/proc/self/mountinfo") as f:
        v1, v2 = cgroup_mounts(f)
    if "memory" in v1:
        missing = [c for c in V1_REQUIRED if c not in v1]
        if missing:
            raise DriverUnavailableError(
                f"cgroup v1 controllers not mounted: {', '.join(missing)}",
                hint="mount them under /sys/fs/cgroup (or boot with the unified hierarchy)",
            )
        return CgroupsV1({c: v1[c] for c in V1_REQUIRED + V1_OPTIONAL if c in v1}, parent)
    if v2 is not None:
        available = set(read_text(v2 / "cgroup.controllers").split())
        missing = [c for c in V2_CONTROLLERS if c not in available]
        if missing:
            raise DriverUnavailableError(
                f"cgroup v2 controllers unavailable: {', '.join(missing)}",
                hint="enable them at the cgroup2 root (they may be bound to a v1 hierarchy)",
            )
        return CgroupsV2({"unified": v2}, parent)
    raise DriverUnavailableError(
        "no cgroup filesystem with the memory controller is mounted",
        hint="mount cgroup2 at /sys/fs/cgroup (systemd does this by default)",
    )
