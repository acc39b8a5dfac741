"""The images a node holds, reported in its heartbeat row (``nodes.images``: image ids) so
placement only picks nodes that can boot the requested image.

A system image is held when this node's ``VOIDRUN_IMAGES_DIR`` has it built (its manifest:
``images/manifest.py``); any other image (imported, snapshot) when its root filesystem and
every layer below it exist here. The check is a few ``stat`` calls per image, run in a thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import anyio.to_thread

from .importer import ORGS_DIR
from .locations import located
from .manifest import MANIFEST, find_built_image

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


def unlisted(images_root: Path, listed: set[str], older_than: float) -> list[Path]:
    """Complete org images here (``orgs/<org>/<name>/<tag>`` with a manifest) that no image
    row names (``listed``: the rows' stored root filesystem paths) and whose manifest is
    older than ``older_than`` seconds: what a delete left on a node it could not reach.
    Blocking. The age keeps an import that has just published its files but not yet its row
    (the CLI) out of it."""
    orgs = images_root / ORGS_DIR
    # rows of older servers may name the same directory by another server's absolute path
    marker = f"/{ORGS_DIR}/"
    tails = {
        ORGS_DIR + "/" + p.split(marker, 1)[1] for p in listed if p.startswith("/") and marker in p
    }
    listed = listed | tails
    now = time.time()
    found: list[Path] = []
    for manifest in sorted(orgs.glob(f"*/*/*/{MANIFEST}")):
        directory = manifest.parent
        if any(part.startswith(".") for part in directory.relative_to(orgs).parts):
            continue
        try:
            age = now - manifest.lstat().st_mtime
        except FileNotFoundError:
            continue
        if str((directory / "rootfs").relative_to(images_root)) not in listed and age > older_than:
            found.append(directory / "rootfs")
    return found
