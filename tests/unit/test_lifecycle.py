"""The state machine (``services/lifecycle.py``) through ``SandboxService``, with a driver that
only records what it was asked: every verb from every status does what the table says or
answers the contract's error (CONTRACT §C.5), and the service's per-sandbox memory (locks,
live rows, sockets, agent connections) does not grow with sandboxes that come and go."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from voidrun_server import ids
from voidrun_server.api.errors import status_for
from voidrun_server.config import Settings
from voidrun_server.drivers.base import SandboxInfo, SandboxSpec, SandboxState
from voidrun_server.errors import VoidRunError
from voidrun_server.services import accounts
from voidrun_server.services.accounts import Principal
from voidrun_server.services.agents import AgentPool, AgentSocket
from voidrun_server.services.lifecycle import (
    MESSAGES,
    RESULT,
    TRANSITIONS,
    Action,
    Status,
    Verb,
    step,
)
from voidrun_server.services.locks import KeyedLocks
from voidrun_server.services.sandboxes import SandboxService
from voidrun_server.services.storage import DiskFloor
from voidrun_server.store import db
from voidrun_server.store.tables import Sandbox

API_VERBS = [Verb.START, Verb.STOP, Verb.PAUSE, Verb.RESUME, Verb.SLEEP, Verb.WAKE, Verb.DELETE]


class RecordingDriver:
    """Does nothing, successfully, and remembers what it was asked."""

    name = "recording"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def _info(self) -> SandboxInfo:
        return SandboxInfo(SandboxState.RUNNING, Path("/nonexistent/agent.sock"), pid=1)

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        raise AssertionError("not used here")

    async def start(self, sandbox_id: str) -> SandboxInfo:
        self.calls.append("start")
        return self._info()

    async def stop(self, sandbox_id: str) -> None:
        self.calls.append("stop")

    async def destroy(self, sandbox_id: str) -> None:
        self.calls.append("destroy")

    async def inspect(self, sandbox_id: str) -> SandboxInfo:
        return self._info()

    async def recover(self) -> dict[str, SandboxInfo]:
        return {}

    async def pause(self, sandbox_id: str) -> None:
        self.calls.append("pause")

    async def resume(self, sandbox_id: str) -> None:
        self.calls.append("resume")


class AgentsThatAnswer(AgentPool):
    async def ping(self, sandbox_id: str, socket: AgentSocket) -> None:
        pass

    async def connect(self, sandbox_id: str, socket: AgentSocket) -> None:
        pass


Database = tuple[async_sessionmaker[AsyncSession], Principal]


@pytest.fixture
async def database(db_url: str) -> AsyncIterator[Database]:
    engine = db.create_engine(db_url)
    try:
        await db.migrate(engine)
        sessions = db.session_factory(engine)
        async with db.transaction(sessions) as session:
            org = await accounts.create_org(session, "acme")
        yield sessions, Principal(key_id="k" * 24, org_id=org.id, user_id="u" * 24)
    finally:
        await engine.dispose()


@asynccontextmanager
async def sandbox_service(
    sessions: async_sessionmaker[AsyncSession], data_dir: Path
) -> AsyncIterator[SandboxService]:
    async with anyio.create_task_group() as tasks:
        agents = AgentsThatAnswer(tasks, connect_timeout=1)
        driver = RecordingDriver()
        settings = Settings(data_dir=data_dir)
        floor = DiskFloor(data_dir, settings.min_free_disk_mb)
        yield SandboxService(settings, sessions, driver, agents, lambda _: None, floor)
        tasks.cancel_scope.cancel()


async def add_sandbox(service: SandboxService, caller: Principal, status: Status) -> str:
    sandbox_id = ids.new_id()
    async with db.transaction(service.sessions) as session:
        session.add(
            Sandbox(
                id=sandbox_id,
                org_id=caller.org_id,
                created_by=caller.user_id,
                name="box",
                image="code:1",
                cpu=1,
                mem=1024,
                disk_mb=256,
                status=status,
            )
        )
    return sandbox_id


def driver_calls(service: SandboxService) -> list[str]:
    assert isinstance(service.driver, RecordingDriver)
    return service.driver.calls


@pytest.mark.parametrize("sdk", [False, True], ids=["seed-dialect", "sdk-dialect"])
async def test_every_verb_from_every_status(database: Database, tmp_path: Path, sdk: bool) -> None:
    sessions, caller = database
    async with sandbox_service(sessions, tmp_path) as service:
        await every_verb_from_every_status(service, caller, sdk)


async def every_verb_from_every_status(
    service: SandboxService, caller: Principal, sdk: bool
) -> None:
    for verb in API_VERBS:
        for status in Status:
            sandbox_id = await add_sandbox(service, caller, status)
            before = len(driver_calls(service))
            try:
                action = step(verb, status, sdk)
            except VoidRunError as wrong:
                with pytest.raises(type(wrong)) as refused:
                    await service.apply_verb(caller, sandbox_id, verb, sdk)
                assert status_for(refused.value) == 400, (verb, status)
                assert refused.value.message == "Invalid sandbox state"
                assert refused.value.details == wrong.details
                assert f"(current status: {status})" in str(wrong.details)
                expected_status, expected_calls = status, []
            else:
                message = await service.apply_verb(caller, sandbox_id, verb, sdk)
                assert message == MESSAGES[verb]
                expected_status = RESULT[action] if action else status
                expected_calls = [action.value] if action else []
            row = await service.get(caller, sandbox_id)
            assert (row.status, driver_calls(service)[before:]) == (
                expected_status,
                expected_calls,
            ), (verb, status)


def test_the_table_matches_the_contract() -> None:
    """CONTRACT §C.5, the reconciled machine: who may do what, and the SDK's ``start``."""
    allowed = {(verb, status) for verb, status in TRANSITIONS if verb in API_VERBS}
    assert {s for v, s in allowed if v is Verb.STOP} == {Status.RUNNING, Status.PAUSED}
    assert {s for v, s in allowed if v in (Verb.PAUSE, Verb.SLEEP)} == {Status.RUNNING}
    assert {s for v, s in allowed if v is Verb.RESUME} == {Status.PAUSED}
    assert {s for v, s in allowed if v is Verb.WAKE} == {Status.PAUSED, Status.STOPPED}
    assert {s for v, s in allowed if v is Verb.START} == {
        Status.STOPPED,
        Status.ERROR,
        Status.KILLED,
    }
    assert {s for v, s in allowed if v is Verb.DELETE} == set(Status)
    assert step(Verb.START, Status.PAUSED, sdk_dialect=True) is Action.RESUME
    for status in (Status.ERROR, Status.KILLED, Status.DELETED):
        with pytest.raises(VoidRunError) as refused:
            step(Verb.USE, status)
        assert status_for(refused.value) == 404
        assert refused.value.message == "Sandbox not running"


async def test_data_plane_calls_wake_and_sandboxes_leave_nothing_behind(
    database: Database, tmp_path: Path
) -> None:
    """Auto-wake from paused and stopped; then, after deletes through the API and through
    the auto-sleep ladder, no per-sandbox state is left in memory."""
    sessions, caller = database
    async with sandbox_service(sessions, tmp_path) as service:
        await wake_and_delete(service, caller)


async def wake_and_delete(service: SandboxService, caller: Principal) -> None:
    gone = []
    for _ in range(3):
        sandbox_id = await add_sandbox(service, caller, Status.RUNNING)
        await service.ensure_running(caller, sandbox_id)
        assert sandbox_id in service._live
        for verb in (Verb.SLEEP, Verb.STOP):
            await service.apply_verb(caller, sandbox_id, verb)
            assert sandbox_id not in service._live
            running = await service.ensure_running(caller, sandbox_id)  # wakes it
            assert (await service.get(caller, sandbox_id)).status == Status.RUNNING
            assert running.agent_socket.path == Path("/nonexistent/agent.sock")
        await service.apply_verb(caller, sandbox_id, Verb.DELETE)
        await service.apply_verb(caller, sandbox_id, Verb.DELETE)  # twice: still a 200
        gone.append(sandbox_id)
    idle = await add_sandbox(service, caller, Status.RUNNING)
    await service.ensure_running(caller, idle)
    for verb in (Verb.IDLE_PAUSE, Verb.IDLE_STOP, Verb.IDLE_DELETE):
        await service.idle_step(idle, verb)
    await service.idle_step(idle, Verb.IDLE_PAUSE)  # deleted meanwhile: not applicable
    assert (await service.get(caller, idle)).status == Status.DELETED
    gone.append(idle)
    for sandbox_id in gone:
        assert sandbox_id not in service.locks
        assert sandbox_id not in service._live
        assert sandbox_id not in service._sockets
        assert sandbox_id not in service.activity._pending
    assert len(service.locks) == 0
    assert not service.agents._held and not service.agents._locks and not service.agents._frozen


async def test_keyed_locks_exist_only_while_used() -> None:
    locks = KeyedLocks()
    order: list[str] = []

    async def hold(name: str, entered: anyio.Event | None = None) -> None:
        async with locks.hold("a"):
            order.append(name)
            if entered is not None:
                entered.set()
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as tasks:
        first = anyio.Event()
        tasks.start_soon(hold, "first", first)
        await first.wait()
        tasks.start_soon(hold, "second")
        with anyio.move_on_after(0.001):  # a waiter that gives up (cancelled)
            await hold("never")
        assert "a" in locks
    assert order == ["first", "second"] and len(locks) == 0
