"""Per-org quotas: how many sandboxes, and how much CPU, memory and disk they may hold.

Which sandboxes count (the rule is the same everywhere, ``store/repos/quotas.py`` computes it):

* **number of sandboxes** and **disk**: every sandbox that is not ``deleted`` — a stopped,
  errored or killed sandbox still has its disk image and still appears in the list;
* **CPU** and **memory**: sandboxes that are ``running`` or ``paused`` (a sandbox still booting
  is recorded as running; a paused one keeps its memory). Stopping releases them, so starting
  (or auto-waking) a stopped sandbox is checked again.

Limits are the server defaults (``VOIDRUN_ORG_MAX_*``) unless the org has overrides, set with
``voidrun-server orgs quota``. A create checks and inserts in one transaction that first locks
the org row, so concurrent creates cannot overshoot, on SQLite or PostgreSQL, from any number of
processes. Starting a stopped sandbox changes no row until the driver has booted it, so starts
in this process reserve their CPU and memory in memory (``Reservations``) before checking and
both kinds of check see them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from ..config import Settings
from ..errors import NotFoundError, QuotaExceededError
from ..store.repos import quotas as repo
from ..store.repos.quotas import Standing, Usage
from ..store.tables import Org

__all__ = ["Quota", "Reservations", "Usage", "check", "effective", "set_quota", "usage"]


@dataclass(frozen=True)
class Quota:
    max_sandboxes: int
    cpu: int
    mem_mb: int
    disk_mb: int


@dataclass(frozen=True)
class _Limit:
    label: str
    unit: str
    option: str


_LIMITS = {
    "sandboxes": _Limit("sandboxes", "", "--max-sandboxes"),
    "cpu": _Limit("CPUs", "", "--cpu"),
    "mem_mb": _Limit("memory", " MiB", "--mem-mb"),
    "disk_mb": _Limit("disk", " MiB", "--disk-mb"),
}


def effective(settings: Settings, org: Org | Standing) -> Quota:
    def pick(override: int | None, default: int) -> int:
        return default if override is None else override

    if isinstance(org, Org):
        org = Standing(org.name, org.quota_max_sandboxes, org.quota_cpu, org.quota_mem_mb,
                       org.quota_disk_mb, Usage())  # fmt: skip
    return Quota(
        max_sandboxes=pick(org.max_sandboxes, settings.org_max_sandboxes),
        cpu=pick(org.cpu, settings.org_max_cpu),
        mem_mb=pick(org.mem_mb, settings.org_max_mem_mb),
        disk_mb=pick(org.disk_mb, settings.org_max_disk_mb),
    )


class Reservations:
    """CPU and memory of sandboxes being started in this process, per org."""

    def __init__(self) -> None:
        self._by_org: dict[str, dict[str, Usage]] = {}

    def held(self, org_id: str, besides: str = "") -> Usage:
        total = Usage()
        for sandbox_id, amount in self._by_org.get(org_id, {}).items():
            if sandbox_id != besides:
                total = total + amount
        return total

    @contextmanager
    def hold(self, org_id: str, sandbox_id: str, amount: Usage) -> Iterator[None]:
        entries = self._by_org.setdefault(org_id, {})
        entries[sandbox_id] = amount
        try:
            yield
        finally:
            entries.pop(sandbox_id, None)
            if not entries:
                self._by_org.pop(org_id, None)


async def check(
    session: AsyncSession,
    settings: Settings,
    org_id: str,
    wanted: Usage,
    pending: Usage,
    *,
    lock: bool = True,
) -> None:
    """Lock the org and refuse (403) if ``wanted`` on top of current usage and ``pending``
    (in-flight starts) exceeds a limit. Call first in the transaction that records the change;
    ``lock=False`` is an early, advisory check only."""
    standing = await (repo.lock_org if lock else repo.standing)(session, org_id)
    if standing is None:
        raise NotFoundError("org not found")
    quota = effective(settings, standing)
    current = standing.usage + pending
    limits = {
        "sandboxes": quota.max_sandboxes,
        "cpu": quota.cpu,
        "mem_mb": quota.mem_mb,
        "disk_mb": quota.disk_mb,
    }
    for field, limit in limits.items():
        requested = getattr(wanted, field)
        in_use = getattr(current, field)
        if requested and in_use + requested > limit:
            raise QuotaExceededError(
                details=_explain(standing.name, field, in_use, requested, limit)
            )


def _explain(org_name: str, field: str, in_use: int, requested: int, limit: int) -> str:
    info = _LIMITS[field]
    unit = info.unit
    return (
        f"{info.label} quota of org '{org_name}': {in_use}{unit} in use + {requested}{unit} "
        f"requested > limit {limit}{unit}. Delete (or stop) sandboxes to free it, or ask the "
        f"operator to raise it: voidrun-server orgs quota {org_name} {info.option} N"
    )


async def usage(session: AsyncSession, org_id: str) -> Usage:
    return await repo.usage(session, org_id)


async def set_quota(
    session: AsyncSession,
    org: Org,
    *,
    max_sandboxes: int | None,
    cpu: int | None,
    mem_mb: int | None,
    disk_mb: int | None,
    reset: bool,
) -> None:
    """Change the org's overrides: given values replace, ``reset`` clears all first."""
    if reset:
        current: tuple[int | None, ...] = (None, None, None, None)
    else:
        current = (org.quota_max_sandboxes, org.quota_cpu, org.quota_mem_mb, org.quota_disk_mb)
    given = (max_sandboxes, cpu, mem_mb, disk_mb)
    merged = [new if new is not None else old for new, old in zip(given, current, strict=True)]
    await repo.set_overrides(session, org.id, *merged)
    org.quota_max_sandboxes, org.quota_cpu, org.quota_mem_mb, org.quota_disk_mb = merged
