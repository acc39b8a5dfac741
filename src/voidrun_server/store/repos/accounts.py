"""Orgs, users, memberships and API keys: session in, rows out."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..tables import ApiKey, KeyEpoch, Org, OrgMember, RevokedApiKey, User


async def org_by_name(session: AsyncSession, name: str) -> Org | None:
    return (await session.execute(select(Org).where(Org.name == name))).scalar_one_or_none()


async def count_orgs(session: AsyncSession) -> int:
    return int((await session.execute(select(func.count()).select_from(Org))).scalar_one())


async def user_by_id(session: AsyncSession, user_id: str) -> User | None:
    return await session.get(User, user_id)


async def user_by_email(session: AsyncSession, email: str) -> User | None:
    return (await session.execute(select(User).where(User.email == email))).scalar_one_or_none()


async def org_members(session: AsyncSession, org_id: str) -> Sequence[User]:
    query = (
        select(User)
        .join(OrgMember, OrgMember.user_id == User.id)
        .where(OrgMember.org_id == org_id)
        .order_by(User.created_at, User.id)
    )
    return (await session.execute(query)).scalars().all()


async def orgs_of_user(session: AsyncSession, user_id: str) -> Sequence[Org]:
    query = (
        select(Org)
        .join(OrgMember, OrgMember.org_id == Org.id)
        .where(OrgMember.user_id == user_id)
        .order_by(Org.created_at, Org.id)
    )
    return (await session.execute(query)).scalars().all()


async def is_member(session: AsyncSession, org_id: str, user_id: str) -> bool:
    return await session.get(OrgMember, (org_id, user_id)) is not None


async def key_by_hash(session: AsyncSession, key_hash: str) -> ApiKey | None:
    query = select(ApiKey).where(ApiKey.key_hash == key_hash)
    return (await session.execute(query)).scalar_one_or_none()


async def key_in_org(session: AsyncSession, org_id: str, key_id: str) -> ApiKey | None:
    query = select(ApiKey).where(ApiKey.id == key_id, ApiKey.org_id == org_id)
    return (await session.execute(query)).scalar_one_or_none()


async def keys_of_org(session: AsyncSession, org_id: str) -> Sequence[ApiKey]:
    query = (
        select(ApiKey)
        .where(ApiKey.org_id == org_id)
        .order_by(ApiKey.created_at.desc(), ApiKey.id.desc())
    )
    return (await session.execute(query)).scalars().all()


async def set_key_last_used(session: AsyncSession, key_id: str, when: datetime) -> None:
    """Record use without bumping ``updated_at`` (using a key is not editing it)."""
    statement = (
        update(ApiKey)
        .where(ApiKey.id == key_id)
        .values(last_used_at=when, updated_at=ApiKey.updated_at)
    )
    await session.execute(statement)


async def was_revoked(session: AsyncSession, key_hash: str) -> bool:
    return await session.get(RevokedApiKey, key_hash) is not None


def record_revoked(session: AsyncSession, key: ApiKey) -> None:
    session.add(RevokedApiKey(key_hash=key.key_hash, org_id=key.org_id))


async def inactive_key_ids(session: AsyncSession, key_ids: Sequence[str]) -> set[str]:
    """Which of ``key_ids`` no longer authenticate (deleted or deactivated): one primary-key
    lookup for all of them."""
    query = select(ApiKey.id).where(ApiKey.id.in_(key_ids), ApiKey.is_active.is_(True))
    active = set((await session.execute(query)).scalars().all())
    return {key_id for key_id in key_ids if key_id not in active}


async def bump_key_epoch(session: AsyncSession) -> None:
    """Tell every server's key cache that some key stopped being valid (commits with the
    caller's transaction)."""
    statement = update(KeyEpoch).where(KeyEpoch.id == 1).values(epoch=KeyEpoch.epoch + 1)
    if (await session.execute(statement)).rowcount == 0:  # type: ignore[attr-defined]
        session.add(KeyEpoch(id=1, epoch=1))
        await session.flush()
