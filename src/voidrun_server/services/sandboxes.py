"""Sandboxes: create, read, update, delete, lifecycle verbs and auto-wake for the data plane.

The database holds the desired state, the driver the actual one. Every change goes: lock the
sandbox → look the verb and status up in ``lifecycle.TRANSITIONS`` (a wrong state is the
contract's error) → ask the driver → record the result in one short transaction. Driver calls
carry their own deadlines; cleanup after a failed create is shielded from cancellation.

The data plane (``ensure_running``) touches no database when it can help it: this process owns
its sandboxes and makes every status change itself (``set_status``, ``_act``, the health check's
``forget_runtime``), so it keeps the rows of its running sandboxes in ``_live`` and updates it
with each change; a miss reads the database once and refills it, unless a status changed
meanwhile. Ownership is checked against the caller's org on every call (an entry of another org
takes the database path, whose 404 is the one for an unknown id). Activity timestamps are
recorded in memory and written in batches (``services/activity.py``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .. import ids
from ..config import Settings
from ..drivers.base import (
    DriverError,
    DriverUnavailableError,
    NetworkPolicy,
    NetworkUsage,
    SandboxInfo,
    SandboxNotFoundError,
    UnsupportedByDriverError,
)
from ..drivers.driverset import DriverSet
from ..drivers.remote.fleet import Fleet
from ..errors import (
    InvalidStateError,
    NotFoundError,
    VoidRunError,
)
from ..schemas.sandboxes import NetworkSpec, PortSpec, SandboxCreate
from ..store.db import transaction
from ..store.repos import sandboxes as repo
from ..store.repos.quotas import Usage
from ..store.tables import Sandbox
from ..store.types import utcnow
from . import locks, networking, quotas
from .accounts import Principal
from .activity import ActivityLog
from .agents import AgentPool, AgentSocket
from .image_user import ImageUsers
from .lifecycle import MESSAGES, RESULT, Action, Status, Verb, allows, step
from .locks import KeyedLocks
from .pool import WarmPool
from .provisioning import Provisioner, describe
from .row_versions import row_versions_for
from .storage import DiskFloor
from .validation import validate_ports

log = logging.getLogger(__name__)
# Verbs the server applies on its own: auto-sleep's ladder, and a data-plane call waking a
# sandbox (recorded as sandbox.auto_pause, sandbox.auto_resume, ...).
AUTOMATIC = frozenset({Verb.IDLE_PAUSE, Verb.IDLE_STOP, Verb.IDLE_DELETE, Verb.USE})
# What routes read of a sandbox (its stored row, never written outside this layer); routes
# import this name, never ``store.tables``.
SandboxRow = Sandbox
Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], object]
VIOLATION_EVENT = "sandbox.agent_violation"


@dataclass(frozen=True)
class Running:
    """A sandbox ready for data-plane calls."""

    row: Sandbox
    agent_socket: AgentSocket


class SandboxService:
    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        driver: DriverSet,
        agents: AgentPool,
        spawn: Spawn,
        disk_floor: DiskFloor,
        pools: Mapping[str, WarmPool] | None = None,
        fleet: Fleet | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.driver = driver
        self.agents = agents
        self.spawn = spawn
        self.locks = KeyedLocks()  # one per sandbox while in use: never grows
        # Agent socket per running sandbox: asking the driver on every data-plane call would
        # put file reads and a thread hop on the hot path.
        self._sockets: dict[str, AgentSocket] = {}
        # Rows of the sandboxes known to be running, for the data plane (see module doc);
        # ``_changes`` counts status changes so that a refill after a miss cannot undo one.
        self._live: dict[str, Sandbox] = {}
        self._changes = 0
        # Told of each sandbox whose status or row changes (the preview proxy drops its
        # connections into it).
        self.row_changed: list[Callable[[str], None]] = []
        self.activity = ActivityLog(sessions, settings.pause_after_idle_seconds)
        self.image_users = ImageUsers(sessions)  # the image's User, per image id
        self.pools = dict(pools or {})  # warm pool per isolation
        self.starting = quotas.Reservations()
        self.disk_floor = disk_floor
        # VOIDRUN_ROLE=api: the driver places sandboxes on nodes (services/fleet.py); other
        # replicas change rows too, so the data plane reads the row on every call
        self.fleet = fleet
        self.shared_database = settings.resolved_database_url.startswith("postgresql")
        # ... but its cached rows can be checked in one cheap read (services/row_versions.py)
        url = settings.resolved_database_url
        self.row_versions = row_versions_for(url) if fleet is not None else None
        self.provisioner = Provisioner(self)

    def agent_violated(self, sandbox_id: str, reason: str) -> None:
        """The sandbox's agent broke the protocol (``AgentPool.on_violation``): stop the
        sandbox and mark it ``error`` with the reason, in the background."""
        log.warning("sandbox %s: agent protocol violation: %s", sandbox_id, reason)

        async def quarantine() -> None:
            async with self.lock(sandbox_id):
                async with self.sessions() as session:
                    row = await repo.get(session, sandbox_id)
                if row is None or row.status == Status.DELETED:
                    return  # a failed create already cleaned up
                self.forget_runtime(sandbox_id)
                with anyio.CancelScope(shield=True):
                    try:
                        with anyio.fail_after(self.settings.sandbox_ready_timeout_seconds + 5):
                            await self.driver.stop(sandbox_id)
                    except (DriverError, TimeoutError) as exc:
                        log.error("could not stop misbehaving sandbox %s: %s", sandbox_id, exc)
                    await self.set_status(
                        sandbox_id,
                        Status.ERROR,
                        error=f"stopped: its agent broke the protocol ({reason})",
                        event=VIOLATION_EVENT,
                    )

        self.spawn(quarantine)

    def forget_runtime(self, sandbox_id: str) -> None:
        """Drop cached connection state of a sandbox found dead (the health check)."""
        self._sockets.pop(sandbox_id, None)
        self._not_live(sandbox_id)
        self.agents.forget(sandbox_id)

    def _not_live(self, sandbox_id: str) -> None:
        self._live.pop(sandbox_id, None)
        self._changes += 1
        for listener in self.row_changed:
            listener(sandbox_id)

    def lock(self, sandbox_id: str) -> AbstractAsyncContextManager[None]:
        """Serialises status changes of one sandbox (``services/locks.py``)."""
        return self.locks.hold(sandbox_id)

    @asynccontextmanager
    async def verb_lock(self, sandbox_id: str) -> AsyncIterator[None]:
        """:meth:`lock`, and on an API replica on PostgreSQL the sandbox's advisory lock
        too, so a verb through one replica and a verb through another wait for each other."""
        async with self.lock(sandbox_id):
            if self.fleet is None or not self.shared_database:
                yield
                return
            async with locks.across_replicas(self.sessions, sandbox_id):
                yield

    # -- reads -----------------------------------------------------------------------------

    async def get(self, caller: Principal, sandbox_id: str) -> Sandbox:
        row = None
        if ids.is_id(sandbox_id):
            async with self.sessions() as session:
                row = await repo.get_in_org(session, caller.org_id, sandbox_id)
        if row is None:
            raise NotFoundError("Sandbox not found")
        return row

    async def list(
        self,
        caller: Principal,
        page: int,
        limit: int,
        labels: dict[str, str],
        statuses: Sequence[str] = (),
    ) -> tuple[Sequence[Sandbox], int]:
        offset = (page - 1) * limit
        async with self.sessions() as session:
            return await repo.page_in_org(session, caller.org_id, offset, limit, labels, statuses)

    # -- create (services/provisioning.py) ----------------------------------------------------

    async def create(self, caller: Principal, body: SandboxCreate) -> Sandbox:
        return await self.provisioner.create(caller, body)

    async def check_quota(
        self,
        session: AsyncSession,
        org_id: str,
        wanted: Usage,
        *,
        lock: bool = True,
        besides: str = "",
    ) -> None:
        pending = self.starting.held(org_id, besides=besides)
        await quotas.check(session, self.settings, org_id, wanted, pending, lock=lock)

    # -- update / delete -------------------------------------------------------------------

    async def update(
        self,
        caller: Principal,
        sandbox_id: str,
        auto_sleep: bool | None,
        network: NetworkSpec | None = None,
        ports: Sequence[PortSpec] | None = None,
    ) -> Sandbox:
        declared = None if ports is None else validate_ports([*ports], None)
        await self.get(caller, sandbox_id)
        if network is not None:
            async with self.lock(sandbox_id):
                await self._set_network(await self.get(caller, sandbox_id), network)
        async with transaction(self.sessions) as session:
            row = await repo.get(session, sandbox_id)
            assert row is not None
            changes: dict[str, object] = {}
            if auto_sleep is not None:
                row.auto_sleep = changes["autoSleep"] = auto_sleep
            if network is not None:
                changes["network"] = True
            if declared is not None:
                row.ports = [p.model_dump() for p in declared]
                changes["ports"] = True
            repo.record(session, "sandbox.update", caller.org_id, sandbox_id, **changes)
        self._not_live(sandbox_id)  # the data plane's copy of the row (previews read its ports)
        return row

    def live_row(self, sandbox_id: str) -> Sandbox | None:
        """The row of a sandbox known to be running here, without a query (see module doc);
        None: read the database."""
        return self._live.get(sandbox_id) if self.fleet is None else None

    async def _set_network(self, row: Sandbox, spec: NetworkSpec) -> None:
        """Check, apply (live: the driver's rules change under open connections), record."""
        current = NetworkPolicy.from_wire(row.network) if row.network else None
        policy = networking.requested_policy(
            self.settings, self.driver, row.isolation, spec, current
        )
        if row.status == Status.DELETED:
            raise InvalidStateError(details="sandbox is deleted")
        driver = self.driver.networked(row.isolation)
        assert driver is not None and policy is not None
        try:
            await driver.set_network_policy(row.id, policy)
        except SandboxNotFoundError:
            pass  # nothing on this node (killed): the row's policy applies at its next start
        except DriverError as exc:
            raise VoidRunError("Update failed", describe(exc)) from exc
        async with transaction(self.sessions) as session:
            stored = await repo.get(session, row.id)
            assert stored is not None
            stored.network = policy.to_wire()

    async def network_usage(self, row: Sandbox) -> NetworkUsage | None:
        driver = self.driver.networked(row.isolation)
        if driver is None or row.status not in (Status.RUNNING, Status.PAUSED):
            return None
        try:
            return await driver.network_usage(row.id)
        except DriverError:
            return None

    async def delete(self, caller: Principal, sandbox_id: str) -> None:
        await self.apply_verb(caller, sandbox_id, Verb.DELETE)

    # -- lifecycle verbs -------------------------------------------------------------------

    async def apply_verb(
        self, caller: Principal, sandbox_id: str, verb: Verb, sdk: bool = False
    ) -> str:
        """Run an API verb (``lifecycle.TRANSITIONS``); returns the envelope's message."""
        await self.get(caller, sandbox_id)  # unknown ids: 404 before waiting for the lock
        async with self.verb_lock(sandbox_id):
            row = await self.get(caller, sandbox_id)
            action = step(verb, Status(row.status), sdk)
            if action is not None:
                await self._act(row, action, verb)
        return MESSAGES[verb]

    async def ensure_running(self, caller: Principal, sandbox_id: str) -> Running:
        """For data-plane calls: wake a paused/stopped sandbox, refresh its activity time."""
        live = self._live.get(sandbox_id)
        if live is not None and live.org_id == caller.org_id:
            socket = self._sockets.get(sandbox_id)
            if socket is not None and await self._still_live(live):
                self.activity.record(sandbox_id)
                return Running(row=live, agent_socket=socket)
        changes = self._changes
        row = await self.get(caller, sandbox_id)
        if self.fleet is not None and row.status != Status.DELETED:
            await self.fleet.of(sandbox_id)  # 503 while its node is suspect or lost
        if row.status != Status.RUNNING:
            async with self.verb_lock(sandbox_id):
                row = await self.get(caller, sandbox_id)
                action = step(Verb.USE, Status(row.status))
                if action is not None:
                    await self._act(row, action, Verb.USE)
        self.activity.record(sandbox_id)
        socket = self._sockets.get(sandbox_id)
        if socket is None:
            socket = AgentSocket.of(await self.driver.inspect(sandbox_id))
            self._sockets[sandbox_id] = socket
        if changes == self._changes and row.status == Status.RUNNING:
            self._live[sandbox_id] = row
        return Running(row=row, agent_socket=socket)

    async def _still_live(self, row: Sandbox) -> bool:
        """A cached running row may serve this call: always here alone; on a fleet when the
        database still holds it (another replica may have changed it) and its node serves."""
        if self.fleet is None:
            return True
        if self.row_versions is None or not await self.row_versions.still_running(row):
            self._live.pop(row.id, None)  # changed (or unknown): read again, cached again
            return False
        await self.fleet.of(row.id)  # 503 while its node is suspect or lost
        return True

    async def agent_socket(self, sandbox_id: str) -> AgentSocket:
        """The agent socket of a sandbox the caller already made sure is running (cached as
        ``ensure_running`` caches it)."""
        socket = self._sockets.get(sandbox_id)
        if socket is None:
            socket = AgentSocket.of(await self.driver.inspect(sandbox_id))
            self._sockets[sandbox_id] = socket
        return socket

    async def idle_step(self, sandbox_id: str, verb: Verb) -> None:
        """An auto-sleep step (``Verb.IDLE_*``): applies only if the sandbox is still in a
        status the table allows it from (it may have changed since the scan)."""
        async with self.verb_lock(sandbox_id):
            async with self.sessions() as session:
                row = await repo.get(session, sandbox_id)
            if row is None or not allows(verb, Status(row.status)):
                return
            action = step(verb, Status(row.status))
            if action is not None:
                log.info("auto-sleep: %s %s", action.value, sandbox_id)
                await self._act(row, action, verb)

    async def _act(self, row: Sandbox, action: Action, verb: Verb) -> None:
        """Ask the driver, then record ``RESULT[action]``. Caller holds the sandbox lock."""
        sandbox_id = row.id
        self._not_live(sandbox_id)  # until set_status records the outcome
        status, event = RESULT[action], f"sandbox.{action.value}"
        if verb in AUTOMATIC:  # the event history says what nobody asked for explicitly
            event = f"sandbox.auto_{action.value}"
        try:
            if action is Action.PAUSE:
                self.agents.freeze(sandbox_id, True)
                try:
                    await self.driver.pause(sandbox_id)
                except BaseException:
                    self.agents.freeze(sandbox_id, False)
                    raise
            elif action is Action.RESUME:
                await self.driver.resume(sandbox_id)
                self.agents.freeze(sandbox_id, False)
            elif action in (Action.STOP, Action.DESTROY):
                self.agents.forget(sandbox_id)
                self.agents.freeze(sandbox_id, False)
                if action is Action.STOP:
                    await self.driver.stop(sandbox_id)
                else:
                    await self.driver.destroy(sandbox_id)
                    event = "sandbox.auto_delete" if verb is Verb.IDLE_DELETE else "sandbox.delete"
            else:
                # Starting takes CPU and memory again: reserve, check, boot, record.
                wanted = Usage(cpu=row.cpu, mem_mb=row.mem)
                with self.starting.hold(row.org_id, sandbox_id, wanted):
                    async with transaction(self.sessions) as session:
                        await self.check_quota(session, row.org_id, wanted, besides=sandbox_id)
                    info = await self._start(sandbox_id)
                    await self.agents.connect(sandbox_id, AgentSocket.of(info))
                    self._sockets[sandbox_id] = AgentSocket.of(info)
        except (UnsupportedByDriverError, DriverUnavailableError):
            raise  # the caller's mistake (400) or not now (503): nothing happened
        except DriverError as exc:
            if action is Action.START:
                await self.set_status(sandbox_id, Status.ERROR, error=describe(exc))
            raise VoidRunError(f"{action.value.capitalize()} failed", describe(exc)) from exc
        await self.set_status(sandbox_id, status, event=event)

    async def _start(self, sandbox_id: str) -> SandboxInfo:
        with anyio.fail_after(self.settings.sandbox_ready_timeout_seconds + 5):
            return await self.driver.start(sandbox_id)

    async def set_status(
        self, sandbox_id: str, status: Status, *, error: str | None = None, event: str = ""
    ) -> None:
        now = utcnow()
        self._not_live(sandbox_id)
        if status is not Status.RUNNING:
            self._sockets.pop(sandbox_id, None)
            self.activity.forget(sandbox_id)
        async with transaction(self.sessions) as session:
            row = await repo.get(session, sandbox_id)
            if row is None:
                return
            row.status = status
            if error is not None:
                row.error = error[:2000]
            if status is Status.RUNNING:
                row.last_activity_at = now
                row.error = ""
            elif status is Status.PAUSED:
                row.paused_at = now
            elif status is Status.STOPPED:
                row.stopped_at = now
            elif status is Status.DELETED:
                row.deleted_at = now
            repo.record(session, event or f"sandbox.{status}", row.org_id, sandbox_id)
        if status is Status.RUNNING and row is not None and sandbox_id in self._sockets:
            self._live[sandbox_id] = row
