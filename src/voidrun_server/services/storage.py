"""The host free-space floor (``VOIDRUN_MIN_FREE_DISK_MB``) for the data dir's filesystem.

Sandbox disks are sparse: a new 5 GiB disk takes about 1 MiB of host space and grows as the
sandbox writes, up to its size. Granting disks against today's free space alone would
overcommit the host, and a full host filesystem takes the database down with it. So:

* a **create** is refused (507) unless ``free - unwritten - new_disk >= floor``, where
  ``unwritten`` is what existing sandbox disks may still claim (reported by the driver);
* an **upload** is refused (507) when ``free < floor``: it writes into a disk whose space was
  already accounted for at create, so only a host that is really full stops it.

``free`` is one ``statvfs`` (cheap, read every time). ``unwritten`` needs a ``stat`` per disk,
so it is cached for ``CACHE_SECONDS``; a create that passes adds its disk to the cached value
at once (in the same synchronous step as the check), so concurrent creates in that second
cannot both take the same space.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import anyio.to_thread

from ..errors import InsufficientStorageError

MIB = 1024 * 1024
CACHE_SECONDS = 1.0


class DiskFloor:
    def __init__(
        self, data_dir: Path, floor_mb: int, unwritten: Callable[[], int] | None = None
    ) -> None:
        self.data_dir = data_dir
        self.floor = floor_mb * MIB
        self._unwritten = unwritten or (lambda: 0)
        self._cached = 0
        self._cached_at = -CACHE_SECONDS

    def free_bytes(self) -> int:
        stats = os.statvfs(self.data_dir)
        return stats.f_bavail * stats.f_frsize

    async def reserve_for_create(self, disk_mb: int, headroom_mb: int = 0) -> None:
        """Refuse (507) a new sandbox disk the host could not hold while keeping the floor
        (plus ``headroom_mb`` more: the warm pool leaves room for a caller's create)."""
        if self.floor <= 0:
            return
        if time.monotonic() - self._cached_at >= CACHE_SECONDS:
            unwritten = await anyio.to_thread.run_sync(self._unwritten)
            self._cached, self._cached_at = unwritten, time.monotonic()
        # From here to the end: no await, so concurrent creates see each other's reservation.
        free = self.free_bytes()
        new = disk_mb * MIB
        left = free - self._cached - new
        if left < self.floor + headroom_mb * MIB:
            raise InsufficientStorageError(
                "Insufficient storage on the server",
                f"a new {disk_mb} MiB sandbox disk would leave {_mib(left)} MiB of the host's "
                f"{_mib(free)} MiB free once existing sandbox disks ({_mib(self._cached)} MiB "
                f"not written yet) fill up, below the floor of {_mib(self.floor)} MiB "
                "(VOIDRUN_MIN_FREE_DISK_MB); delete sandboxes or free space on the host",
            )
        self._cached += new

    def check_upload(self) -> None:
        """Refuse (507) writes when the host filesystem is already below the floor."""
        if self.floor <= 0:
            return
        free = self.free_bytes()
        if free < self.floor:
            raise InsufficientStorageError(
                "Insufficient storage on the server",
                f"only {_mib(free)} MiB free on the host, below the floor of "
                f"{_mib(self.floor)} MiB (VOIDRUN_MIN_FREE_DISK_MB); delete sandboxes or "
                "free space on the host",
            )


def _mib(value: int) -> int:
    return value // MIB
