"""Sandbox rows: session in, rows out. Every query a caller can reach is scoped by org."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..tables import Event, Sandbox

DELETED = "deleted"


async def get_in_org(session: AsyncSession, org_id: str, sandbox_id: str) -> Sandbox | None:
    query = select(Sandbox).where(Sandbox.id == sandbox_id, Sandbox.org_id == org_id)
    return (await session.execute(query)).scalar_one_or_none()


async def get(session: AsyncSession, sandbox_id: str) -> Sandbox | None:
    return await session.get(Sandbox, sandbox_id)


async def page_in_org(
    session: AsyncSession,
    org_id: str,
    offset: int,
    limit: int,
    labels: dict[str, str],
    statuses: Sequence[str] = (),
) -> tuple[Sequence[Sandbox], int]:
    """Newest first (by creation of the row: a warm-pool sandbox's id is older than its row),
    ``deleted`` rows excluded, only ``statuses`` if given. Label filtering happens here in
    Python because JSON containment differs between SQLite and PostgreSQL; orgs hold few
    enough live rows."""
    where = [Sandbox.org_id == org_id, Sandbox.status != DELETED]
    if statuses:
        where.append(Sandbox.status.in_(statuses))
    query = select(Sandbox).where(*where).order_by(Sandbox.created_at.desc(), Sandbox.id.desc())
    if not labels:
        counted = select(func.count()).select_from(Sandbox).where(*where)
        total = int(await session.scalar(counted) or 0)
        if offset >= total:  # past the end; a huge page number would overflow the database
            return [], total
        rows = (await session.execute(query.offset(offset).limit(limit))).scalars().all()
        return rows, total
    matching = [
        row
        for row in (await session.execute(query)).scalars().all()
        if all(row.labels.get(k) == v for k, v in labels.items())
    ]
    return matching[offset : offset + limit], len(matching)


async def with_status(session: AsyncSession, statuses: Sequence[str]) -> Sequence[Sandbox]:
    query = select(Sandbox).where(Sandbox.status.in_(statuses))
    return (await session.execute(query)).scalars().all()


async def touch_activity(session: AsyncSession, sandbox_id: str, when: datetime) -> None:
    statement = (
        update(Sandbox)
        .where(Sandbox.id == sandbox_id)
        .values(last_activity_at=when, updated_at=Sandbox.updated_at)
    )
    await session.execute(statement)


def record(
    session: AsyncSession, kind: str, org_id: str | None, sandbox_id: str | None, **data: object
) -> None:
    session.add(Event(kind=kind, org_id=org_id, sandbox_id=sandbox_id, data=data))


async def events_of(
    session: AsyncSession, org_id: str, sandbox_id: str, limit: int
) -> Sequence[Event]:
    """The newest ``limit`` events of one sandbox of the org, newest first."""
    query = (
        select(Event)
        .where(Event.org_id == org_id, Event.sandbox_id == sandbox_id)
        .order_by(Event.id.desc())
        .limit(limit)
    )
    return (await session.execute(query)).scalars().all()


async def set_end(
    session: AsyncSession, sandbox_id: str, end_at: datetime | None, on_timeout: str | None = None
) -> None:
    """The E2B API's end time (and, when given, what happens then: ``kill`` or ``pause``)."""
    values: dict[str, object] = {"end_at": end_at}
    if on_timeout is not None:
        values["on_timeout"] = on_timeout
    await session.execute(update(Sandbox).where(Sandbox.id == sandbox_id).values(**values))
