"""How much host space the sparse sandbox disks may still claim.

A sandbox disk is a sparse ext4 image of ``disk_mb`` (``disk.py``): it takes host blocks only as
the sandbox writes. The server must not hand out more disk than the host has, so it adds up,
per image, the part not allocated yet (``st_size - st_blocks * 512``).
"""

from __future__ import annotations

from pathlib import Path

from voidrun_server.drivers.namespace.state import RunDir

__all__ = ["unwritten_bytes"]


def unwritten_bytes(state_dir: Path) -> int:
    """Sum of the unallocated part of every sandbox disk image under ``state_dir``."""
    total = 0
    name = RunDir(state_dir / "x").disk_image.name
    for image in state_dir.glob(f"*/{name}"):
        try:
            info = image.stat()
        except OSError:
            continue  # removed while we looked
        total += max(0, info.st_size - info.st_blocks * 512)
    return total
