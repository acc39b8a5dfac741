"""Org quota rows and usage: the org row is the lock that serialises quota decisions."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import case, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..tables import Org, Sandbox

DELETED = "deleted"
HOLDING_CPU_AND_MEMORY = ("running", "paused")


@dataclass(frozen=True)
class Usage:
    """What an org's sandboxes hold (see ``services/quotas.py`` for which states count)."""

    sandboxes: int = 0
    cpu: int = 0
    mem_mb: int = 0
    disk_mb: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.sandboxes + other.sandboxes,
            self.cpu + other.cpu,
            self.mem_mb + other.mem_mb,
            self.disk_mb + other.disk_mb,
        )


async def lock_org(session: AsyncSession, org_id: str) -> Org | None:
    """Lock the org row until the transaction ends; must be the transaction's first statement.

    PostgreSQL: ``SELECT … FOR UPDATE``. SQLite has no row locks and a deferred transaction
    that reads first cannot safely upgrade to a writer; a no-op ``UPDATE`` as the first
    statement takes the database write lock at once (``BEGIN IMMEDIATE`` semantics, waiting
    up to the busy timeout), so concurrent checks run one after another.
    """
    if session.get_bind().dialect.name == "sqlite":
        await session.execute(update(Org).where(Org.id == org_id).values(updated_at=Org.updated_at))
        query = select(Org).where(Org.id == org_id)
    else:
        query = select(Org).where(Org.id == org_id).with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def usage(session: AsyncSession, org_id: str) -> Usage:
    """One aggregate over the org's live rows (index ``ix_sandboxes_org_status``)."""
    live = Sandbox.status.in_(HOLDING_CPU_AND_MEMORY)
    query = select(
        func.count(),
        func.coalesce(func.sum(case((live, Sandbox.cpu), else_=0)), 0),
        func.coalesce(func.sum(case((live, Sandbox.mem), else_=0)), 0),
        func.coalesce(func.sum(Sandbox.disk_mb), 0),
    ).where(Sandbox.org_id == org_id, Sandbox.status != DELETED)
    count, cpu, mem, disk = (await session.execute(query)).one()
    return Usage(int(count), int(cpu), int(mem), int(disk))


async def set_overrides(
    session: AsyncSession,
    org_id: str,
    max_sandboxes: int | None,
    cpu: int | None,
    mem_mb: int | None,
    disk_mb: int | None,
) -> None:
    """Set the org's overrides (``None`` = back to the server default)."""
    statement = (
        update(Org)
        .where(Org.id == org_id)
        .values(
            quota_max_sandboxes=max_sandboxes,
            quota_cpu=cpu,
            quota_mem_mb=mem_mb,
            quota_disk_mb=disk_mb,
        )
    )
    await session.execute(statement)
