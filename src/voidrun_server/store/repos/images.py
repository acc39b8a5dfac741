"""Image rows: system images (org ``NULL``) plus each org's own."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..tables import Image, Sandbox


def _visible(org_id: str) -> ColumnElement[bool]:
    return or_(Image.org_id.is_(None), Image.org_id == org_id)


async def visible(session: AsyncSession, org_id: str) -> Sequence[Image]:
    query = (
        select(Image)
        .where(_visible(org_id), or_(Image.active.is_(True), Image.org_id == org_id))
        .order_by(Image.created_at.desc(), Image.id.desc())
    )
    return (await session.execute(query)).scalars().all()


async def by_id(session: AsyncSession, org_id: str, image_id: str) -> Image | None:
    query = select(Image).where(Image.id == image_id, _visible(org_id))
    return (await session.execute(query)).scalar_one_or_none()


async def latest_active(session: AsyncSession, org_id: str, name: str) -> Image | None:
    query = (
        select(Image)
        .where(Image.name == name, Image.active.is_(True), _visible(org_id))
        .order_by(Image.created_at.desc(), Image.id.desc())
        .limit(1)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def by_name_tag(session: AsyncSession, org_id: str, name: str, tag: str) -> Image | None:
    query = (
        select(Image)
        .where(Image.name == name, Image.tag == tag, _visible(org_id))
        .order_by(Image.created_at.desc(), Image.id.desc())
        .limit(1)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def system_images(session: AsyncSession) -> Sequence[Image]:
    query = select(Image).where(Image.system.is_(True))
    return (await session.execute(query)).scalars().all()


async def own(session: AsyncSession, org_id: str, name: str, tag: str) -> Image | None:
    """The org's own image ``name:tag`` (never a system image), whatever its status."""
    query = select(Image).where(Image.org_id == org_id, Image.name == name, Image.tag == tag)
    return (await session.execute(query)).scalar_one_or_none()


async def with_absolute_paths(session: AsyncSession) -> Sequence[Image]:
    """Rows written before image paths were relative (a snapshot's layers are as old as its
    own path: both were written when it was made)."""
    query = select(Image).where(Image.rootfs.like("/%"))
    return (await session.execute(query)).scalars().all()


async def set_progress(session: AsyncSession, image_id: str, percent: int) -> None:
    query = (
        update(Image)
        .where(Image.id == image_id, Image.status == "building")
        .values(progress=percent)
    )
    await session.execute(query)


async def stored_paths(session: AsyncSession) -> set[str]:
    """Every root filesystem and layer path the image rows name (as stored)."""
    rows = (await session.execute(select(Image.rootfs, Image.layers))).all()
    return {path for rootfs, layers in rows for path in (rootfs, *(layers or [])) if path}


async def by_rootfs(session: AsyncSession, rootfs: str) -> Image | None:
    query = select(Image).where(Image.rootfs == rootfs).limit(1)
    return (await session.execute(query)).scalar_one_or_none()


async def building(session: AsyncSession) -> Sequence[Image]:
    query = select(Image).where(Image.status == "building")
    return (await session.execute(query)).scalars().all()


async def sandboxes_using(session: AsyncSession, image_id: str) -> int:
    """Sandboxes that still need the image's files (every status but deleted)."""
    query = (
        select(func.count())
        .select_from(Sandbox)
        .where(Sandbox.image_id == image_id, Sandbox.status != "deleted")
    )
    return int((await session.execute(query)).scalar_one())


async def latest_own(session: AsyncSession, org_id: str, name: str) -> Image | None:
    """The org's newest image of that name whatever its status (to say why it is unusable)."""
    query = (
        select(Image)
        .where(Image.name == name, Image.org_id == org_id)
        .order_by(Image.created_at.desc(), Image.id.desc())
        .limit(1)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def snapshots_over(session: AsyncSession, image_id: str) -> int:
    """Snapshot images whose layer lies directly over this image (they need its files)."""
    query = select(func.count()).select_from(Image).where(Image.parent_id == image_id)
    return int((await session.execute(query)).scalar_one())


async def bootable(session: AsyncSession) -> list[tuple[str, str, str, bool, str, list[str]]]:
    """(id, name, tag, system, rootfs, layers) of every active, ready image: what a node checks
    it holds (``images/holdings.py``)."""
    query = select(Image.id, Image.name, Image.tag, Image.system, Image.rootfs, Image.layers).where(
        Image.active.is_(True), Image.status == "ready"
    )
    return [
        (str(i), str(n), str(t), bool(s), str(r or ""), list(layers or []))
        for i, n, t, s, r, layers in (await session.execute(query)).all()
    ]
