"""File-watch tickets shared by API replicas (``watch_tickets``): session in, rows out."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..tables import WatchTicketRow


async def add(session: AsyncSession, row: WatchTicketRow, now: datetime, cap: int) -> None:
    """Insert ``row`` after sweeping expired tickets (everyone's) and the org's oldest beyond
    ``cap - 1``, so an org never holds more than ``cap`` waiting tickets."""
    await session.execute(delete(WatchTicketRow).where(WatchTicketRow.expires_at <= now))
    count = (
        await session.execute(select(func.count()).where(WatchTicketRow.org_id == row.org_id))
    ).scalar_one()
    if count >= cap:
        oldest = (
            select(WatchTicketRow.id)
            .where(WatchTicketRow.org_id == row.org_id)
            .order_by(WatchTicketRow.expires_at)
            .limit(count - cap + 1)
        )
        await session.execute(delete(WatchTicketRow).where(WatchTicketRow.id.in_(oldest)))
    session.add(row)


async def take(
    session: AsyncSession, ticket_id: str, org_id: str, sandbox_id: str, now: datetime
) -> WatchTicketRow | None:
    """Delete and return the ticket if it is the org's, for that sandbox and unexpired: one
    ``DELETE … RETURNING``, so two replicas never both take it."""
    query = (
        delete(WatchTicketRow)
        .where(
            WatchTicketRow.id == ticket_id,
            WatchTicketRow.org_id == org_id,
            WatchTicketRow.sandbox_id == sandbox_id,
            WatchTicketRow.expires_at > now,
        )
        .returning(WatchTicketRow)
    )
    return (await session.execute(query)).scalars().first()


async def waiting(session: AsyncSession, org_id: str, now: datetime) -> int:
    query = select(func.count()).where(
        WatchTicketRow.org_id == org_id, WatchTicketRow.expires_at > now
    )
    return int((await session.execute(query)).scalar_one())
