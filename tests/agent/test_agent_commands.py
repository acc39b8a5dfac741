"""Background commands (``cmd.*``) through the real client against a real agent process."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agent.agent_helpers import AgentProcess, eventually, is_running, live_members
from voidrun_server.agent.commands import MAX_EXITED, RING_BYTES
from voidrun_server.agent.ring import Ring
from voidrun_server.agent.tasks import Task, run, sleep
from voidrun_server.agentclient import AgentClient, AgentOperationError
from voidrun_server.agentclient._procs import OpStream, Output


async def collect(stream: OpStream) -> list[Output]:
    return [chunk async for chunk in stream]


def joined(chunks: list[Output], channel: str | None = None) -> bytes:
    return b"".join(c.data for c in chunks if channel is None or c.channel == channel)


async def test_run_list_attach_stdin_wait(agent: AgentProcess, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    script = f"echo first; echo oops >&2; while [ ! -e {gate} ]; do sleep 0.02; done; echo live; "
    script += "read line; echo got $line; exit 3"
    async with AgentClient(agent.socket) as client:
        procs = client.procs
        started = await procs.run_command(script)
        assert started.running and started.command == script
        listed = {p.pid: p for p in await procs.list_commands()}
        assert listed[started.pid].running and listed[started.pid].exit_code is None

        async def observe_first_output() -> None:
            async with procs.attach_command(started.pid) as peek:
                async for chunk in peek:
                    if b"first" in chunk.data:
                        return

        await observe_first_output()  # the command has produced its early output
        async with procs.attach_command(started.pid) as stream:
            chunks: list[Output] = []
            async for chunk in stream:
                chunks.append(chunk)
                if chunk.data.startswith(b"first"):
                    gate.write_text("")  # only now: "live" is produced after we attached
                if b"live" in chunk.data:
                    await procs.write_stdin(started.pid, "hello\n")
            assert stream.result is not None
        assert joined(chunks, "stdout") == b"first\nlive\ngot hello\n"
        assert joined(chunks, "stderr") == b"oops\n"
        assert stream.result == {"exitCode": 3, "timedOut": False, "dropped": 0}

        done = await procs.wait_command(started.pid)
        assert (done.exit_code, done.timed_out) == (3, False)
        listed = {p.pid: p for p in await procs.list_commands()}
        assert not listed[started.pid].running and listed[started.pid].exit_code == 3
        # A late attach replays everything and ends at once.
        async with procs.attach_command(started.pid) as late:
            assert joined(await collect(late), "stdout") == b"first\nlive\ngot hello\n"


async def test_stdin_eof_and_env_cwd(agent: AgentProcess, tmp_path: Path) -> None:
    async with AgentClient(agent.socket) as client:
        procs = client.procs
        started = await procs.run_command(
            'echo "$GREETING in $PWD"; cat', env={"GREETING": "hi"}, cwd=str(tmp_path)
        )
        await procs.write_stdin(started.pid, "line one\n")
        await procs.write_stdin(started.pid, "line two", eof=True)
        assert (await procs.wait_command(started.pid)).exit_code == 0
        async with procs.attach_command(started.pid) as stream:
            out = joined(await collect(stream))
        assert out == f"hi in {tmp_path}\nline one\nline two".encode()
        with pytest.raises(AgentOperationError) as closed:
            await procs.write_stdin(started.pid, "more")
        assert closed.value.code == "io_error"


async def test_kill_takes_the_whole_group(agent: AgentProcess) -> None:
    async with AgentClient(agent.socket) as client:
        procs = client.procs
        started = await procs.run_command("sleep 300 & sleep 300 & wait")
        await eventually(lambda: len(live_members(started.pid)) >= 3, "the group is up")
        members = live_members(started.pid)
        await procs.kill_command(started.pid)
        done = await procs.wait_command(started.pid)
        assert done.exit_code == 137
        await eventually(lambda: not any(is_running(pid) for pid in members), "the group died")


async def test_timeout_kills_the_group(agent: AgentProcess) -> None:
    async with AgentClient(agent.socket) as client:
        procs = client.procs
        started = await procs.run_command("sleep 300 & sleep 300", time_limit=0.5)
        await eventually(lambda: bool(live_members(started.pid)), "the group is up")
        members = live_members(started.pid)
        done = await procs.wait_command(started.pid)
        assert (done.exit_code, done.timed_out) == (124, True)
        await eventually(lambda: not any(is_running(pid) for pid in members), "the group died")


async def test_commands_outlive_the_connection(agent: AgentProcess, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    async with AgentClient(agent.socket) as client:
        started = await client.procs.run_command(
            f"while [ ! -e {gate} ]; do sleep 0.02; done; echo survived"
        )
        async with client.procs.attach_command(started.pid) as stream:
            pass  # an attach that goes away must not take the command with it
        assert stream.result is None
    gate.write_text("")
    async with AgentClient(agent.socket) as client:
        assert (await client.procs.wait_command(started.pid)).exit_code == 0
        async with client.procs.attach_command(started.pid) as stream:
            assert joined(await collect(stream)) == b"survived\n"


async def test_output_ring_is_bounded(agent: AgentProcess) -> None:
    size = 3 * RING_BYTES
    async with AgentClient(agent.socket) as client:
        procs = client.procs
        started = await procs.run_command(f"head -c {size} /dev/zero | tr '\\0' x; echo END")
        assert (await procs.wait_command(started.pid)).exit_code == 0
        async with procs.attach_command(started.pid) as stream:
            out = joined(await collect(stream))
    assert stream.result is not None
    assert len(out) <= RING_BYTES and out.endswith(b"x" * 1000 + b"END\n")
    assert stream.result["dropped"] == size + 4 - len(out)


async def test_unknown_pid_and_bad_args(agent: AgentProcess) -> None:
    async with AgentClient(agent.socket) as client:
        procs = client.procs
        for call in (
            procs.kill_command(999_999),
            procs.wait_command(999_999),
            procs.write_stdin(999_999, "x"),
        ):
            with pytest.raises(AgentOperationError) as unknown:
                await call
            assert unknown.value.code == "not_found"
        with pytest.raises(AgentOperationError) as attach:
            async with procs.attach_command(999_999):
                pass
        assert attach.value.code == "not_found"
        with pytest.raises(AgentOperationError) as bad_cwd:
            await procs.run_command("true", cwd="/no/such/dir")
        assert bad_cwd.value.code == "not_found"


async def test_exited_history_is_bounded(agent: AgentProcess) -> None:
    async with AgentClient(agent.socket) as client:
        procs = client.procs
        pids = []
        for _ in range(MAX_EXITED + 5):
            pids.append((await procs.run_command("true")).pid)
            await procs.wait_command(pids[-1])
        listed = await procs.list_commands()
    assert [p.pid for p in listed] == pids[-MAX_EXITED:]


# -- the ring itself ------------------------------------------------------------------------


def test_ring_drops_from_the_front_and_keeps_order() -> None:
    ring = Ring(10, max_records=3)
    ring.append("stdout", b"abcd")
    ring.append("stderr", b"EF")
    ring.append("stdout", b"ghij")
    assert (ring.start, ring.end) == (0, 10)
    assert ring.read(0, 100) == (0, "stdout", b"abcd")
    assert ring.read(4, 100) == (4, "stderr", b"EF")
    ring.append("stdout", b"kl")  # coalesced with "ghij", then 2 bytes trimmed
    assert (ring.start, ring.end, ring.size) == (2, 12, 10)
    assert ring.read(0, 100) == (2, "stdout", b"cd")  # a reader at 0 learns it lost 2 bytes
    assert ring.read_all(0) == (2, b"cdEFghijkl")
    ring.append("stderr", b"M")  # a fourth record: the oldest goes whole
    assert ring.read_all(0) == (4, b"EFghijklM")
    ring.append("stdout", b"N")
    assert ring.read_all(0) == (6, b"ghijklMN")
    assert ring.read(7, 3) == (7, "stdout", b"hij")
    assert ring.read(14, 3) == (14, "", b"")


def test_ring_wait_wakes_on_append_and_close() -> None:
    """On the agent's own loop (``agent.tasks``), as the agent runs it."""
    woke: list[int] = []

    async def scenario() -> None:
        ring = Ring(100)

        async def waiter() -> None:
            await ring.wait(0)
            woke.append(ring.end)
            await ring.wait(ring.end)
            woke.append(-1 if ring.closed else ring.end)

        task = Task(waiter())
        await sleep(0)
        ring.append("stdout", b"x")
        while woke != [1]:
            await sleep(0.001)
        assert not await ring.wait(ring.end, limit=0.01)  # nothing new: the limit passes
        ring.close()
        await task

    run(scenario())
    assert woke == [1, -1]
