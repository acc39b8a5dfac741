"""Dashboard sessions (``ui_sessions``): session in, rows out."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..tables import ApiKey, UiSession


async def add(session: AsyncSession, row: UiSession) -> None:
    session.add(row)
    await session.flush()


async def live_with_key(
    session: AsyncSession, id_hash: str, now: datetime
) -> tuple[UiSession, ApiKey] | None:
    """The unexpired session of this digest and its key, when the key still exists."""
    query = (
        select(UiSession, ApiKey)
        .join(ApiKey, ApiKey.id == UiSession.key_id)
        .where(UiSession.id_hash == id_hash, UiSession.expires_at > now)
    )
    found = (await session.execute(query)).first()
    return None if found is None else (found[0], found[1])


async def remove(session: AsyncSession, id_hash: str) -> bool:
    result = await session.execute(delete(UiSession).where(UiSession.id_hash == id_hash))
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def remove_expired(session: AsyncSession, now: datetime) -> None:
    await session.execute(delete(UiSession).where(UiSession.expires_at <= now))


async def remove_of_key(session: AsyncSession, key_id: str) -> None:
    await session.execute(delete(UiSession).where(UiSession.key_id == key_id))
