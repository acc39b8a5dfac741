"""The image catalogue: system images built on this node, and name → ``name:tag`` resolution."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .. import ids
from ..config import Settings
from ..errors import InvalidInputError, NotFoundError
from ..images import locations
from ..images.build import find_built_image
from ..store.db import transaction
from ..store.repos import images as repo
from ..store.tables import Image

log = logging.getLogger(__name__)
ImageRow = Image  # what routes may name (they do not import the store)

# Images the server knows how to build; the tag changes when the recipe does.
SYSTEM_IMAGES: dict[str, str] = {"code": "1.0.0"}
GIB = 1024**3


async def sync_system_images(
    session: AsyncSession, root: Path, *, deactivate: bool = True
) -> list[Image]:
    """Upsert a row per built system image; deactivate rows whose files are gone (not on a
    node daemon: one node lacking an image does not take it from the others). Rows of older
    servers that hold absolute paths under ``root`` get relative ones
    (``images/locations.py``)."""
    for older in await repo.with_absolute_paths(session):
        older.rootfs = locations.stored(root, older.rootfs) if older.rootfs else older.rootfs
        if older.layers:
            older.layers = [locations.stored(root, layer) for layer in older.layers]
    existing = {(row.name, row.tag): row for row in await repo.system_images(session)}
    present: list[Image] = []
    for name, tag in SYSTEM_IMAGES.items():
        built = find_built_image(root, name, tag)
        row = existing.get((name, tag))
        if built is None:
            continue
        size_gb = max(1, math.ceil(built.size_bytes / GIB))
        if row is None:
            row = Image(
                id=ids.new_id(),
                name=name,
                tag=tag,
                system=True,
                org_id=None,
                description=f"Debian bookworm with python3, node, tsx, git ({name}:{tag})",
            )
            session.add(row)
        row.active = True
        row.size_gb = size_gb
        row.rootfs = locations.stored(root, built.rootfs)
        present.append(row)
    for (name, tag), row in existing.items():
        if deactivate and find_built_image(root, name, tag) is None and row.active:
            log.warning("system image %s:%s has no files any more; deactivating it", name, tag)
            row.active = False
    await session.flush()
    return present


async def resolve(session: AsyncSession, org_id: str, reference: str) -> Image:
    """``name`` → the latest active image of that name; ``name:tag`` → exactly that one."""
    name, _, tag = reference.partition(":")
    image = (
        await repo.by_name_tag(session, org_id, name, tag)
        if tag
        else await repo.latest_active(session, org_id, name)
    )
    if image is None and not tag and org_id:
        image = await repo.latest_own(session, org_id, name)
    if image is not None and image.status == "building":
        raise InvalidInputError("image not ready", f"{reference} is still building")
    if image is not None and image.status == "error":
        raise InvalidInputError("image not ready", f"{reference} failed to build: {image.error}")
    if image is None or not image.active or not image.rootfs:
        hint = (
            f"build it with: voidrun-server images build {name}"
            if name in SYSTEM_IMAGES
            else "list images with GET /api/images"
        )
        raise InvalidInputError("image not found", f"{reference}: {hint}")
    return image


async def visible(session: AsyncSession, org_id: str) -> Sequence[Image]:
    return await repo.visible(session, org_id)


async def by_id(session: AsyncSession, org_id: str, image_id: str) -> Image:
    image = await repo.by_id(session, org_id, image_id) if ids.is_id(image_id) else None
    if image is None:
        raise NotFoundError("Image not found")
    return image


async def by_name(session: AsyncSession, org_id: str, name: str) -> Image:
    if len(name) > 100:
        raise InvalidInputError("image name too long", "at most 100 characters")
    image = await repo.latest_active(session, org_id, name)
    if image is None:
        raise NotFoundError("Image not found")
    return image


async def forget(sessions: async_sessionmaker[AsyncSession], image_id: str) -> None:
    """Remove the row of an image whose build or snapshot did not happen (no files)."""
    async with transaction(sessions) as session:
        row = await session.get(Image, image_id)
        if row is not None:
            await session.delete(row)


async def default_rootfs(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> Path | None:
    """The default image's root filesystem here (what a warm pool starts), if it is built."""
    async with sessions() as session:
        try:
            image = await resolve(session, "", settings.default_image)
        except InvalidInputError:
            return None
    return locations.located(settings.images_root, image.rootfs)


def image_env(image: Image) -> dict[str, str]:
    """The image config's ``Env`` (``K=V`` strings) as a mapping; a sandbox's own env wins."""
    env: dict[str, str] = {}
    for item in (image.config or {}).get("env") or []:
        key, sep, value = str(item).partition("=")
        if sep and key:
            env[key] = value
    return env


def start_command(image: Image) -> str | None:
    """``Entrypoint`` + ``Cmd`` as one shell command line, or None when the image has none."""
    import shlex

    config = image.config or {}
    argv = [str(a) for a in (config.get("entrypoint") or []) + (config.get("cmd") or [])]
    return shlex.join(argv) if argv else None
