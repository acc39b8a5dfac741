"""Org quota rows and usage: the org row is the lock that serialises quota decisions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, case, func, select, update
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


@dataclass(frozen=True)
class Standing:
    """An org's quota overrides (``None``: the server default) and what it holds now."""

    name: str
    max_sandboxes: int | None
    cpu: int | None
    mem_mb: int | None
    disk_mb: int | None
    usage: Usage


def _aggregates() -> tuple[ColumnElement[Any], ...]:
    """count, CPU, memory and disk of an org's rows, by the rule of ``services/quotas.py``."""
    live = Sandbox.status.in_(HOLDING_CPU_AND_MEMORY)
    return (
        func.count(),
        func.coalesce(func.sum(case((live, Sandbox.cpu), else_=0)), 0),
        func.coalesce(func.sum(case((live, Sandbox.mem), else_=0)), 0),
        func.coalesce(func.sum(Sandbox.disk_mb), 0),
    )


def _counted(org_id: str) -> tuple[ColumnElement[bool], ...]:
    """The org's rows that count (index ``ix_sandboxes_org_status``)."""
    return (Sandbox.org_id == org_id, Sandbox.status != DELETED)


_OVERRIDES = (Org.name, Org.quota_max_sandboxes, Org.quota_cpu, Org.quota_mem_mb,
              Org.quota_disk_mb)  # fmt: skip


def _usage_subqueries(org_id: str) -> tuple[ColumnElement[Any], ...]:
    return tuple(select(a).where(*_counted(org_id)).scalar_subquery() for a in _aggregates())


def _standing(row: Any) -> Standing:
    name, max_sandboxes, cpu, mem_mb, disk_mb, *used = row
    return Standing(name, max_sandboxes, cpu, mem_mb, disk_mb, Usage(*map(int, used)))


async def standing(session: AsyncSession, org_id: str) -> Standing | None:
    """The org's overrides and usage in one statement, without a lock (advisory checks)."""
    query = select(*_OVERRIDES, *_usage_subqueries(org_id)).where(Org.id == org_id)
    row = (await session.execute(query)).one_or_none()
    return None if row is None else _standing(row)


async def lock_org(session: AsyncSession, org_id: str) -> Standing | None:
    """Lock the org row until the transaction ends and read its standing; must be the
    transaction's first statement.

    SQLite has no row locks, and a deferred transaction that reads first cannot safely upgrade
    to a writer: a no-op ``UPDATE`` as the first statement takes the database write lock at once
    (``BEGIN IMMEDIATE`` semantics, waiting up to the busy timeout), and its ``RETURNING``
    carries the overrides and the usage, read under that lock: one round trip.

    PostgreSQL: ``SELECT … FOR UPDATE``, then the usage in a statement of its own: under READ
    COMMITTED a later statement sees what a create that held the lock before us committed,
    while a subquery of the locking statement would read the snapshot taken before it waited.
    """
    if session.get_bind().dialect.name == "sqlite":
        statement = (
            update(Org)
            .where(Org.id == org_id)
            .values(updated_at=Org.updated_at)
            .returning(*_OVERRIDES, *_usage_subqueries(org_id))
        )
        row = (await session.execute(statement)).one_or_none()
        return None if row is None else _standing(row)
    query = select(*_OVERRIDES).where(Org.id == org_id).with_for_update()
    locked = (await session.execute(query)).one_or_none()
    if locked is None:
        return None
    name, max_sandboxes, cpu, mem_mb, disk_mb = locked
    return Standing(name, max_sandboxes, cpu, mem_mb, disk_mb, await usage(session, org_id))


async def usage(session: AsyncSession, org_id: str) -> Usage:
    """One aggregate over the org's rows that count."""
    query = select(*_aggregates()).where(*_counted(org_id))
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
