"""The conformance suite every sandbox driver passes.

Subclass :class:`DriverContract` in a driver's test module and provide a ``harness`` fixture
(see ``harness.py``); pytest then runs every test below against that driver. The suite talks to
sandboxes only through the driver and the real agent (``voidrun_server.agentclient``), so it
holds for any runtime: create -> agent answers -> files -> pause -> resume -> stop -> start ->
destroy -> recover after a restart.
"""

from __future__ import annotations

import anyio
import pytest

from tests.drivers.harness import DriverHarness, eventually, new_sandbox_id
from voidrun_server.agentclient import AgentClient
from voidrun_server.drivers.base import (
    Driver,
    DriverError,
    Observable,
    Pausable,
    SandboxInfo,
    SandboxNotFoundError,
    SandboxState,
    SandboxStateError,
)

COUNTER = "/root/counter"
# A background process inside the sandbox that counts; its output lands in the writable layer.
COUNTER_CMD = (
    f"nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > {COUNTER}.tmp; "
    f"mv {COUNTER}.tmp {COUNTER}; sleep 0.01; done' >/dev/null 2>&1 &"
)


async def sh(info: SandboxInfo, command: str) -> tuple[int, str]:
    """Run ``command`` inside through the agent: (exit code, stdout + stderr). The socket must
    belong to the uid the driver reported for this sandbox."""
    owner = info.agent_socket_owner
    async with AgentClient(info.agent_socket, connect_timeout=10, owner_uid=owner) as agent:
        result = await agent.exec(command, timeout=60)
    return result.exit_code, result.stdout_text + result.stderr_text


async def counter(harness: DriverHarness, sandbox_id: str) -> int:
    data = harness.read_writable(sandbox_id, COUNTER)
    return int(data or b"0")


async def advances(harness: DriverHarness, sandbox_id: str, seconds: float = 60.0) -> None:
    """Wait (generously: the CPU is shared) until the counter moves past its current value."""
    before = await counter(harness, sandbox_id)

    async def moved() -> bool:
        return await counter(harness, sandbox_id) > before

    await eventually(moved, seconds)


async def stands_still(harness: DriverHarness, sandbox_id: str, seconds: float = 0.5) -> bool:
    """A frozen counter: pause returns only once every task is frozen, so any change in
    ``seconds`` (however slow the host) means the sandbox still runs."""
    before = await counter(harness, sandbox_id)
    await anyio.sleep(seconds)
    return await counter(harness, sandbox_id) == before


@pytest.mark.sandbox
class DriverContract:
    """Tests take a ``harness`` fixture; each test destroys what it creates."""

    async def test_create_runs_agent(self, harness: DriverHarness) -> None:
        driver = harness.new_driver()
        spec = harness.spec()
        info = await driver.create(spec)
        assert info.state is SandboxState.RUNNING
        assert info.pid is not None
        code, out = await sh(info, "echo hello; hostname; echo $VOIDRUN_TEST")
        assert code == 0, out
        assert out.split() == ["hello", spec.hostname, "1"]
        assert await driver.inspect(spec.sandbox_id) == info
        if info.agent_socket_owner is not None:  # the uid the server checks the socket against
            assert info.agent_socket.stat().st_uid == info.agent_socket_owner
        await driver.destroy(spec.sandbox_id)
        assert harness.leftovers(spec.sandbox_id) == []

    async def test_full_lifecycle(self, harness: DriverHarness) -> None:
        driver = harness.new_driver()
        spec = harness.spec()
        info = await driver.create(spec)
        code, out = await sh(info, f"echo kept > /root/file; {COUNTER_CMD}")
        assert code == 0, out
        await advances(harness, spec.sandbox_id)

        assert isinstance(driver, Pausable)
        await driver.pause(spec.sandbox_id)
        assert (await driver.inspect(spec.sandbox_id)).state is SandboxState.PAUSED
        assert await stands_still(harness, spec.sandbox_id)
        await driver.pause(spec.sandbox_id)  # idempotent

        await driver.resume(spec.sandbox_id)
        assert (await driver.inspect(spec.sandbox_id)).state is SandboxState.RUNNING
        await advances(harness, spec.sandbox_id)

        await driver.stop(spec.sandbox_id)
        stopped = await driver.inspect(spec.sandbox_id)
        assert stopped.state is SandboxState.STOPPED and stopped.pid is None
        with pytest.raises(SandboxStateError):
            await driver.pause(spec.sandbox_id)

        restarted = await driver.start(spec.sandbox_id)
        assert restarted.state is SandboxState.RUNNING
        assert restarted.pid != info.pid
        code, out = await sh(restarted, "cat /root/file")
        assert (code, out.strip()) == (0, "kept")
        assert await driver.start(spec.sandbox_id) == restarted  # already running: no-op

        await driver.destroy(spec.sandbox_id)
        assert (await driver.inspect(spec.sandbox_id)).state is SandboxState.GONE
        assert harness.leftovers(spec.sandbox_id) == []
        await driver.destroy(spec.sandbox_id)  # idempotent

    async def test_stop_paused_sandbox(self, harness: DriverHarness) -> None:
        driver = harness.new_driver()
        spec = harness.spec()
        await driver.create(spec)
        assert isinstance(driver, Pausable)
        await driver.pause(spec.sandbox_id)
        await driver.stop(spec.sandbox_id)
        assert (await driver.inspect(spec.sandbox_id)).state is SandboxState.STOPPED
        info = await driver.start(spec.sandbox_id)
        assert (await sh(info, "true"))[0] == 0

    async def test_recover_readopts_running_sandbox(self, harness: DriverHarness) -> None:
        first = harness.new_driver()
        running, paused, stopped = harness.spec(), harness.spec(), harness.spec()
        info = await first.create(running)
        await first.create(paused)
        await first.create(stopped)
        assert isinstance(first, Pausable)
        await first.pause(paused.sandbox_id)
        await first.stop(stopped.sandbox_id)
        del first  # the "server" restarts; the sandboxes must not notice

        second = harness.new_driver()
        found = await second.recover()
        assert found[running.sandbox_id] == info
        assert found[paused.sandbox_id].state is SandboxState.PAUSED
        assert found[stopped.sandbox_id].state is SandboxState.STOPPED
        code, out = await sh(info, "echo still-here")
        assert (code, out.strip()) == (0, "still-here")
        assert isinstance(second, Pausable)
        await second.resume(paused.sandbox_id)
        await second.stop(running.sandbox_id)
        await second.start(running.sandbox_id)
        for spec in (running, paused, stopped):
            await second.destroy(spec.sandbox_id)
            assert harness.leftovers(spec.sandbox_id) == []

    async def test_killed_behind_our_back_is_gone(self, harness: DriverHarness) -> None:
        driver = harness.new_driver()
        spec = harness.spec()
        info = await driver.create(spec)
        harness.kill_behind_back(info)

        async def gone() -> bool:
            return (await driver.inspect(spec.sandbox_id)).state is SandboxState.GONE

        await eventually(gone)
        found = await harness.new_driver().recover()
        assert found[spec.sandbox_id].state is SandboxState.GONE
        # its disk survived: the server may start it again or destroy it
        restarted = await driver.start(spec.sandbox_id)
        assert (await sh(restarted, "true"))[0] == 0
        await driver.destroy(spec.sandbox_id)
        assert harness.leftovers(spec.sandbox_id) == []

    async def test_unknown_sandbox(self, harness: DriverHarness) -> None:
        driver: Driver = harness.new_driver()
        sandbox_id = new_sandbox_id()
        assert (await driver.inspect(sandbox_id)).state is SandboxState.GONE
        await driver.destroy(sandbox_id)
        with pytest.raises(SandboxNotFoundError):
            await driver.start(sandbox_id)
        with pytest.raises(SandboxNotFoundError):
            await driver.stop(sandbox_id)
        assert isinstance(driver, Pausable)
        with pytest.raises(SandboxNotFoundError):
            await driver.pause(sandbox_id)
        assert sandbox_id not in await driver.recover()

    async def test_duplicate_create_is_refused(self, harness: DriverHarness) -> None:
        driver = harness.new_driver()
        spec = harness.spec()
        info = await driver.create(spec)
        with pytest.raises(DriverError):
            await driver.create(spec)
        assert await driver.inspect(spec.sandbox_id) == info  # the original is untouched
        assert (await sh(info, "true"))[0] == 0

    async def test_failed_create_leaves_nothing(self, harness: DriverHarness) -> None:
        driver = harness.new_driver()
        spec = harness.spec(rootfs=harness.spec().rootfs / "does-not-exist")
        with pytest.raises(DriverError):
            await driver.create(spec)
        assert harness.leftovers(spec.sandbox_id) == []
        assert (await driver.inspect(spec.sandbox_id)).state is SandboxState.GONE

    async def test_stats(self, harness: DriverHarness) -> None:
        driver = harness.new_driver()
        if not isinstance(driver, Observable):
            pytest.skip(f"{harness.name} does not report stats")
        spec = harness.spec(mem_mb=300)
        await driver.create(spec)
        stats = await driver.stats(spec.sandbox_id)
        assert stats.memory_limit_bytes == 300 << 20
        assert stats.memory_bytes and stats.memory_bytes > 0
        assert stats.pids and stats.pids >= 1
        assert stats.oom_kills == 0
