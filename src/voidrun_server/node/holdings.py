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
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..images.manifest import find_built_image
from ..store.tables import Image


def _held(
    images_root: Path, rows: Sequence[tuple[str, str, str, bool, str, list[str]]]
) -> list[str]:
    out: list[str] = []
    for image_id, name, tag, system, rootfs, layers in rows:
        if system:
            if find_built_image(images_root, name, tag) is not None:
                out.append(image_id)
        elif rootfs and all(os.path.isdir(p) for p in (rootfs, *layers)):
            out.append(image_id)
    return sorted(out)


async def held_images(session: AsyncSession, images_root: Path) -> list[str]:
    """Ids of the active, ready images this node can boot."""
    query = select(Image.id, Image.name, Image.tag, Image.system, Image.rootfs, Image.layers).where(
        Image.active.is_(True), Image.status == "ready"
    )
    rows = [
        (str(i), str(n), str(t), bool(s), str(r or ""), list(layers or []))
        for i, n, t, s, r, layers in (await session.execute(query)).all()
    ]
    return await anyio.to_thread.run_sync(_held, images_root, rows)
