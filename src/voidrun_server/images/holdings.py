"""The images a node holds, reported in its heartbeat row (``nodes.images``: image ids) so
placement only picks nodes that can boot the requested image.

A system image is held when this node's ``VOIDRUN_IMAGES_DIR`` has it built (its manifest:
``images/manifest.py``); any other image (imported, snapshot) when its root filesystem and
every layer below it exist here. The check is a few ``stat`` calls per image, run in a thread.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import anyio.to_thread

from .locations import located
from .manifest import find_built_image

Row = tuple[str, str, str, bool, str, list[str]]  # id, name, tag, system, rootfs, layers


def _held(images_root: Path, rows: Sequence[Row]) -> list[str]:
    out: list[str] = []
    for image_id, name, tag, system, rootfs, layers in rows:
        if system:
            if find_built_image(images_root, name, tag) is not None:
                out.append(image_id)
        elif rootfs and all(os.path.isdir(located(images_root, p)) for p in (rootfs, *layers)):
            out.append(image_id)
    return sorted(out)


async def held_images(rows: Sequence[Row], images_root: Path) -> list[str]:
    """Ids of the images of ``rows`` (the active, ready ones: ``repos.images.bootable``) this
    node can boot."""
    return await anyio.to_thread.run_sync(_held, images_root, rows)
