"""Copies of a sandbox's disk mount that other mount namespaces took, and releasing them.

A process on the host that makes a new mount namespace (``unshare -m``, ``ip netns exec``, a
systemd unit with ``PrivateTmp``, a container runtime) copies the whole mount table, the loop
mounts of running sandboxes included. Unless propagation carries our later unmount there (it
does not from a private mount, which ``unshare -m`` makes by default), that copy keeps the
sandbox's filesystem and loop device alive after the sandbox is gone: its disk image can never
be detached, and mounting it again would put two ext4 instances on one image.

So when a loop device outlives our unmount, :func:`release_copies` finds the namespaces that
still mount it (``/proc/<pid>/mountinfo``, by device number) and detaches those mounts inside
each of them. That runs in a short-lived helper process of our own interpreter which joins the
namespace with ``setns`` and calls ``umount2(MNT_DETACH)``: nothing is ever *executed* inside a
foreign namespace, whose binaries (a sandbox's, a container's) could be anyone's.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["foreign_copies", "release_copies"]

_HELPER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(f"/proc/{sys.argv[1]}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
if libc.setns(fd, 0x00020000) != 0:
    sys.exit(f"setns: {os.strerror(ctypes.get_errno())}")
failed = 0
for target in sys.argv[2:]:
    if libc.umount2(os.fsencode(target), 2) != 0:  # MNT_DETACH
        failed += 1
sys.exit(1 if failed else 0)
"""


def _device_number(device: str) -> str | None:
    """``7:0`` for ``/dev/loop0`` (as mountinfo writes it)."""
    try:
        return Path("/sys/class/block", Path(device).name, "dev").read_text().strip()
    except OSError:
        return None


def foreign_copies(devices: Iterable[str]) -> dict[int, list[str]]:
    """One pid per foreign mount namespace that still mounts one of ``devices``, with the mount
    points there (deepest first). Our own namespace is left out."""
    numbers = {n for d in devices if (n := _device_number(d))}
    if not numbers:
        return {}
    own = os.readlink("/proc/self/ns/mnt")
    found: dict[str, tuple[int, list[str]]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            namespace = os.readlink(f"/proc/{entry.name}/ns/mnt")
            if namespace == own or namespace in found:
                continue
            with open(f"/proc/{entry.name}/mountinfo") as fh:
                points = [f[4] for line in fh if (f := line.split())[2] in numbers]
        except OSError:
            continue  # gone, or a kernel thread
        if points:
            found[namespace] = (int(entry.name), sorted(points, key=len, reverse=True))
    return dict(found.values())


def release_copies(devices: Iterable[str], timeout: float = 10.0) -> int:
    """Detach every foreign copy of ``devices``' mounts; returns how many namespaces held one."""
    copies = foreign_copies(devices)
    for pid, points in copies.items():
        log.warning(
            "sandbox disk still mounted in another mount namespace (pid %d): detaching %s",
            pid,
            ", ".join(points),
        )
        try:
            subprocess.run(
                [sys.executable, "-I", "-S", "-c", _HELPER, str(pid), *points],
                capture_output=True,
                timeout=timeout,
                check=False,
                env={},
            )
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("could not detach the copy in pid %d's namespace: %s", pid, exc)
    return len(copies)
