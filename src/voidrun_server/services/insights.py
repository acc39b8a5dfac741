"""What the dashboard shows about one sandbox beyond its row: live usage and its history."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ..drivers.base import DriverError
from ..store.repos import sandboxes as repo
from ..store.tables import Event
from ..store.types import utcnow
from .accounts import Principal
from .lifecycle import Status
from .sandboxes import SandboxService


@dataclass(frozen=True)
class Usage:
    """One sample; ``None`` where the runtime does not expose the figure or is not running."""

    status: str
    cpu_usage_ns: int | None = None
    memory_bytes: int | None = None
    memory_limit_bytes: int | None = None
    pids: int | None = None
    oom_kills: int | None = None
    rx_bytes: int | None = None
    tx_bytes: int | None = None
    disk_limit_mb: int | None = None
    sampled_at: str = ""
    last_activity_at: datetime | None = None


async def usage(service: SandboxService, caller: Principal, sandbox_id: str) -> Usage:
    """The kernel's accounting for a running (or paused) sandbox of the caller's org."""
    row = await service.get(caller, sandbox_id)
    now = utcnow().isoformat()
    last = service.activity.pending(row.id) or row.last_activity_at
    base = Usage(row.status, disk_limit_mb=row.disk_mb, sampled_at=now, last_activity_at=last)
    if row.status not in (Status.RUNNING, Status.PAUSED):
        return base
    try:
        stats = await service.driver.stats(row.id)
    except DriverError:
        return base  # stopped meanwhile, or a runtime without accounting
    network = await service.network_usage(row)
    return Usage(
        status=row.status,
        cpu_usage_ns=stats.cpu_usage_ns,
        memory_bytes=stats.memory_bytes,
        memory_limit_bytes=stats.memory_limit_bytes,
        pids=stats.pids,
        oom_kills=stats.oom_kills,
        rx_bytes=network.rx_bytes if network else None,
        tx_bytes=network.tx_bytes if network else None,
        disk_limit_mb=row.disk_mb,
        sampled_at=now,
        last_activity_at=last,
    )


async def events(
    service: SandboxService, caller: Principal, sandbox_id: str, limit: int
) -> Sequence[Event]:
    """The sandbox's audit trail (``events``), newest first; a sandbox of another org is 404."""
    row = await service.get(caller, sandbox_id)
    async with service.sessions() as session:
        return await repo.events_of(session, caller.org_id, row.id, limit)
