"""The limits the kernel enforces on a sandbox, read from the host's cgroup files."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from voidrun_server.drivers.namespace.cgroups import detect_cgroups


@dataclass(frozen=True)
class Limits:
    cpu_quota_us: int  # per 100 ms period: 100_000 per core
    cpu_period_us: int
    mem_bytes: int
    pids_max: int
    no_swap: bool  # memsw == limit (v1) or swap.max == 0 (v2)


def sandbox_cgroups(sandbox_id: str, parent: str = "voidrun") -> dict[str, str]:
    """The sandbox's group directories, named the way the driver names them."""
    paths = detect_cgroups(parent).paths_for(sandbox_id)
    missing = [p for p in paths.values() if not Path(p).is_dir()]
    assert not missing, f"no cgroup for sandbox {sandbox_id}: {missing}"
    return paths


def read_limits(paths: Mapping[str, str]) -> Limits:
    """Memory, CPU and pids limits on cgroup v1 (a directory per controller) or v2."""
    if "unified" in paths:
        group = Path(paths["unified"])
        quota, period = (group / "cpu.max").read_text().split()
        swap = group / "memory.swap.max"
        return Limits(
            cpu_quota_us=int(quota),  # "max" (no limit) raises: a sandbox always has one
            cpu_period_us=int(period),
            mem_bytes=int((group / "memory.max").read_text()),
            pids_max=int((group / "pids.max").read_text()),
            no_swap=not swap.exists() or swap.read_text().strip() == "0",
        )
    memory, cpu = Path(paths["memory"]), Path(paths["cpu"])
    mem_bytes = int((memory / "memory.limit_in_bytes").read_text())
    memsw = memory / "memory.memsw.limit_in_bytes"
    return Limits(
        cpu_quota_us=int((cpu / "cpu.cfs_quota_us").read_text()),
        cpu_period_us=int((cpu / "cpu.cfs_period_us").read_text()),
        mem_bytes=mem_bytes,
        pids_max=int((Path(paths["pids"]) / "pids.max").read_text()),
        no_swap=not memsw.exists() or int(memsw.read_text()) == mem_bytes,
    )
