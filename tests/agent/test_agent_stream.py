"""exec.stream: ordering, cancellation, and flow control with a slow reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agent.agent_helpers import AgentProcess, RawConnection, eventually, is_running
from voidrun_server.agentclient import AgentClient, AgentOperationError, ExecExit, ExecOutput


async def test_first_chunk_arrives_while_the_command_still_runs(
    agent: AgentProcess, tmp_path: Path
) -> None:
    marker = tmp_path / "go-on"
    command = f"echo first; while [ ! -e {marker} ]; do sleep 0.01; done; echo second >&2"
    events: list[ExecOutput | ExecExit] = []
    async with AgentClient(agent.socket) as client:
        async with client.exec_stream(command, timeout=60) as stream:
            assert stream.pid > 0
            first = await stream.__anext__()
            # The command cannot finish before the marker exists, and we create it only now.
            assert first == ExecOutput("stdout", b"first\n")
            assert is_running(stream.pid)
            marker.touch()
            events = [event async for event in stream]
    assert events == [ExecOutput("stderr", b"second\n"), ExecExit(0)]


async def test_stream_reports_timeout(agent: AgentProcess) -> None:
    async with AgentClient(agent.socket) as client:
        async with client.exec_stream("echo hi; sleep 100", timeout=0.5) as stream:
            events = [event async for event in stream]
    assert events[0] == ExecOutput("stdout", b"hi\n")
    assert events[-1] == ExecExit(124, timed_out=True)
    stderr = b"".join(e.data for e in events if isinstance(e, ExecOutput) and e.channel == "stderr")
    assert b"timed out" in stderr


async def test_stream_errors_before_any_output(agent: AgentProcess, tmp_path: Path) -> None:
    async with AgentClient(agent.socket) as client:
        with pytest.raises(AgentOperationError) as info:
            async with client.exec_stream("true", cwd=str(tmp_path / "missing")):
                pass
        assert info.value.code == "not_found"
        await client.ping()


async def test_leaving_a_stream_early_kills_the_command(agent: AgentProcess) -> None:
    async with AgentClient(agent.socket) as client:
        async with client.exec_stream("echo ready; sleep 100 & sleep 100") as stream:
            pid = stream.pid
            assert await stream.__anext__() == ExecOutput("stdout", b"ready\n")
        await eventually(lambda: not is_running(pid), "the abandoned command is killed")
        await client.ping()


async def test_disconnecting_kills_streamed_commands(agent: AgentProcess) -> None:
    raw = await RawConnection.open(agent.socket)
    await raw.send({"t": "req", "id": 1, "op": "exec.stream", "args": {"command": "sleep 100"}})
    head, _ = await raw.recv()
    assert head["t"] == "head"
    pid = head["body"]["pid"]
    assert is_running(pid)
    await raw.aclose()
    await eventually(lambda: not is_running(pid), "the disconnected client's command is killed")


def wchar(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/pid/io")


async def test_slow_reader_is_backpressured_and_does_not_block_others(
    agent: AgentProcess,
) -> None:
    bound = 16 * 1024 * 1024  # a window plus pipe and reader buffers is far below this
    async with AgentClient(agent.socket) as client:
        async with client.exec_stream("exec yes") as stream:
            first = await stream.__anext__()
            assert isinstance(first, ExecOutput)
            # We stop reading. Other requests on the same connection still get answers...
            for _ in range(3):
                await client.ping()
            result = await client.exec("echo alive")
            assert result.stdout == b"alive\n"
            # ...and `yes` ends up blocked on its pipe instead of the agent buffering its output.
            last = [-1]

            def stalled() -> bool:
                written = wchar(stream.pid)
                assert written < bound, f"agent buffered {written} bytes for a stalled reader"
                settled, last[0] = written == last[0], written
                return settled

            await eventually(stalled, "the writer is blocked by backpressure")
            # Reading resumes the flow.
            seen = 0
            async for event in stream:
                assert isinstance(event, ExecOutput)
                seen += len(event.data)
                if seen > 3 * bound:
                    break
        await eventually(lambda: not is_running(stream.pid), "yes is killed")
