"""A process's memory, read from /proc, for tests that bound what the server may hold."""

from __future__ import annotations

from pathlib import Path


def vm_kib(pid: int, field: str) -> int:
    """A ``Vm*`` line of /proc/<pid>/status (VmRSS, VmHWM, …) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def reset_peak_rss(pid: int) -> int:
    """Reset the process's VmHWM to its current RSS (Linux >= 4.0); returns that RSS in KiB,
    so ``vm_kib(pid, "VmHWM") - reset_peak_rss(pid)`` is the peak growth from now on."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return vm_kib(pid, "VmRSS")
