"""Export a sandbox's writable layer consistently: the namespace driver's ``Exportable``.

The copy itself is ``layercopy.py``. What this adds is a point in time:

* a **running** sandbox is frozen (the cgroup freezer, as ``pause`` does) before the copy
  and thawed after it, in a ``finally``: whatever fails (the copy, its deadline, the freeze
  itself half-way), the sandbox is thawed before the error propagates. Its writes sit in the
  upper filesystem's page cache, which the copy reads through the same mount, so nothing
  needs flushing: frozen, the tree is exactly what the sandbox's processes see;
* a **paused** sandbox is already frozen and stays paused;
* a **stopped** sandbox's disk is mounted for the copy and unmounted after it (the driver's
  per-sandbox lock keeps a start out meanwhile).

Blocking: the driver calls :func:`export_layer` from a worker thread.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from voidrun_server.drivers.base import LayerExport, SandboxState, SandboxStateError
from voidrun_server.drivers.namespace import disk
from voidrun_server.drivers.namespace.host import CLEANUP_TIMEOUT, SandboxHost
from voidrun_server.drivers.namespace.layercopy import copy_layer
from voidrun_server.drivers.namespace.state import RunDir, SandboxRecord

__all__ = ["export_layer"]


def export_layer(
    host: SandboxHost,
    run: RunDir,
    record: SandboxRecord,
    dest: Path,
    uid_base: int,
    deadline: float,
) -> LayerExport:
    """Copy the sandbox's upper layer into ``dest`` (an empty directory), owners shifted to
    ``uid_base + N``; returns what was copied and how long the sandbox was frozen."""
    state = host.observe(run, record).state
    if state not in (SandboxState.RUNNING, SandboxState.PAUSED, SandboxState.STOPPED):
        raise SandboxStateError(f"sandbox is {state.value}", "only a running, paused or "
                                "stopped sandbox can be snapshotted")  # fmt: skip
    freeze = state is SandboxState.RUNNING
    mounted = False
    frozen_at = time.monotonic()
    try:
        if freeze:
            host.cgroups.freeze(record.cgroups, deadline)
            frozen_at = time.monotonic()
        elif state is SandboxState.STOPPED and not os.path.ismount(run.disk_mount):
            disk.detach_loop_devices(run.disk_image, deadline)
            run.disk_mount.mkdir(mode=0o700, exist_ok=True)
            mounted = True
            disk.mount_image(run.disk_image, run.disk_mount)
        stats = copy_layer(
            run.upper, dest, src_base=record.uid_base, dst_base=uid_base, deadline=deadline
        )
    finally:
        if freeze:
            host.cgroups.thaw(record.cgroups)
        frozen = time.monotonic() - frozen_at if freeze else 0.0
        if mounted:
            cleanup = time.monotonic() + CLEANUP_TIMEOUT
            disk.release(run.disk_image, run.disk_mount, cleanup)
    return LayerExport(
        entries=stats.entries,
        bytes=stats.bytes,
        whiteouts=stats.whiteouts,
        stripped_setuid=tuple(stats.stripped_setuid),
        skipped=tuple(stats.skipped),
        frozen_seconds=frozen,
    )
