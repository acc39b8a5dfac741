"""Keep the database and reality in agreement.

On start: re-adopt every sandbox the driver finds on disk, mark rows whose sandbox vanished as
``killed``, and destroy leftovers nobody owns. While running: notice sandboxes that died behind
our back, and walk idle sandboxes down the auto-sleep ladder (running → paused → stopped →
deleted) with the configured thresholds.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import anyio

from ..drivers.base import (
    DriverError,
    DriverUnavailableError,
    SandboxNotFoundError,
    SandboxState,
)
from ..store.db import transaction
from ..store.repos import sandboxes as repo
from ..store.types import utcnow
from .e2b import expire_due
from .lifecycle import Status, Verb
from .sandboxes import SandboxService

log = logging.getLogger(__name__)
LIVE = (Status.RUNNING, Status.PAUSED, Status.STOPPED)
EXPECTED = {
    Status.RUNNING: SandboxState.RUNNING,
    Status.PAUSED: SandboxState.PAUSED,
    Status.STOPPED: SandboxState.STOPPED,
}
ACTUAL = {state: status for status, state in EXPECTED.items()}


async def reconcile_on_start(service: SandboxService, isolation: str) -> None:
    """Reconcile the rows of ``isolation`` with what its driver finds (each driver once, as
    it becomes available: the others' rows are left alone until theirs is)."""
    found = await service.driver.recover(isolation)
    killed: list[str] = []
    async with transaction(service.sessions) as session:
        rows = {row.id: row for row in await repo.with_status(session, list(Status))}
        for row in rows.values():
            if row.id not in found:  # the driver's recover() bound the ones it holds
                service.driver.bind(row.id, row.isolation)
            if row.isolation != isolation or row.status not in LIVE:
                continue
            info = found.get(row.id)
            state = info.state if info else SandboxState.GONE
            if state is EXPECTED[Status(row.status)]:
                continue
            new = ACTUAL.get(state, Status.KILLED)
            log.warning("sandbox %s was %s, found %s: now %s", row.id, row.status, state, new)
            row.status = new
            if new is Status.KILLED:
                row.error = "the sandbox's processes were gone when the server started"
                if info is not None:
                    killed.append(row.id)
            repo.record(session, "sandbox.reconcile", row.org_id, row.id, found=state.value)
    for sandbox_id in killed:
        await _release(service, sandbox_id)
    orphans = [i for i in found if i not in rows or rows[i].status == Status.DELETED]
    # (a sandbox is bound to the driver that found it, so an orphan's destroy goes there)
    for sandbox_id in orphans:
        log.warning("destroying orphan sandbox %s (no live row)", sandbox_id)
        try:
            await service.driver.destroy(sandbox_id)
        except DriverError as exc:
            log.error("could not destroy orphan %s: %s", sandbox_id, exc)


async def _release(service: SandboxService, sandbox_id: str) -> None:
    """Free what a dead sandbox still holds (mounts, cgroups). Its disk stays so that `start`
    can bring it back, unless its creation never finished: then there is nothing to keep."""
    try:
        await service.driver.stop(sandbox_id)
    except SandboxNotFoundError:
        try:
            await service.driver.destroy(sandbox_id)
        except DriverError as exc:
            log.error("could not clean up interrupted sandbox %s: %s", sandbox_id, exc)
        await service.set_status(
            sandbox_id, Status.ERROR, error="its creation was interrupted by a server restart"
        )
    except DriverError as exc:
        log.error("could not release killed sandbox %s: %s", sandbox_id, exc)


async def watch_forever(service: SandboxService) -> None:
    """The background loop owned by the app's task group."""
    interval = service.settings.auto_sleep_check_interval_seconds
    while True:
        await anyio.sleep(interval)
        try:
            await check_health(service)
            await auto_sleep(service)
        except Exception:  # a failed pass must not end the loop; the next one retries
            log.exception("reconcile pass failed")


async def check_health(service: SandboxService) -> None:
    """Mark running/paused sandboxes whose processes are gone as ``killed``."""
    async with service.sessions() as session:
        rows = await repo.with_status(session, [Status.RUNNING, Status.PAUSED])
    # On a fleet another replica may be booting a sandbox whose row it already committed (the
    # boot runs beside the create transaction, under that replica's lock, not ours).
    booting = utcnow() - timedelta(seconds=service.settings.sandbox_ready_timeout_seconds + 10)
    for row in rows:
        if not service.driver.loaded(row.isolation):
            continue  # its isolation is still starting (or gone): nothing to ask
        if service.fleet is not None and row.created_at > booting:
            continue
        async with service.lock(row.id):
            try:
                info = await service.driver.inspect(row.id)
            except DriverUnavailableError:
                continue  # its node is suspect or unreachable (services/fleet.py)
            if info.state is EXPECTED[Status(row.status)]:
                continue
            async with transaction(service.sessions) as session:
                current = await repo.get(session, row.id)
                if current is None or current.status != row.status:
                    continue
                current.status = ACTUAL.get(info.state, Status.KILLED)
                current.error = f"found {info.state.value} by the health check"
                repo.record(session, "sandbox.died", row.org_id, row.id, found=info.state.value)
            service.forget_runtime(row.id)


async def auto_sleep(service: SandboxService) -> None:
    settings = service.settings
    await service.activity.flush()  # activity is batched in memory (services/activity.py)
    now = utcnow()
    pause_before = now - timedelta(seconds=settings.pause_after_idle_seconds)
    stop_before = now - timedelta(seconds=settings.stop_after_paused_seconds)
    delete_before = now - timedelta(seconds=settings.delete_after_stopped_seconds)
    async with service.sessions() as session:
        rows = await repo.with_status(session, list(LIVE))
    await expire_due(service, rows, now)  # the E2B API's timeouts (services/e2b.py)
    for row in rows:
        if not service.driver.loaded(row.isolation):
            continue
        try:
            if row.status == Status.RUNNING and row.auto_sleep:
                if row.last_activity_at < pause_before:
                    await service.idle_step(row.id, Verb.IDLE_PAUSE)
            elif row.status == Status.PAUSED and (row.paused_at or now) < stop_before:
                await service.idle_step(row.id, Verb.IDLE_STOP)
            elif row.status == Status.STOPPED and (row.stopped_at or now) < delete_before:
                await service.idle_step(row.id, Verb.IDLE_DELETE)
        except Exception as exc:  # one stuck sandbox must not block the others
            log.warning("auto-sleep step for %s failed: %s", row.id, exc)
