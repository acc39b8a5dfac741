"""Shell sessions (``sh.*``) and PTY sessions (``pty.*``) against a real agent process."""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import pytest

from tests.agent.agent_helpers import AgentProcess, eventually, is_running
from voidrun_server.agent.pty import PAUSE_ABOVE, SLOW_CONSUMER
from voidrun_server.agentclient import AgentClient, AgentOperationError
from voidrun_server.agentclient._procs import OpStream, ProcessOps


async def read_until(stream: OpStream, pattern: bytes, seen: bytearray | None = None) -> bytes:
    """Read a terminal stream until ``pattern`` shows up; return everything read."""
    buf = seen if seen is not None else bytearray()
    with anyio.fail_after(20):  # bounds a failing test only
        async for chunk in stream:
            buf.extend(chunk.data)
            if re.search(pattern, buf[-(len(chunk.data) + 256) :]):
                return bytes(buf)
    raise AssertionError(f"stream ended before {pattern!r}: {bytes(buf)!r}")


# -- shell sessions -------------------------------------------------------------------------


async def test_session_state_persists(agent: AgentProcess, tmp_path: Path) -> None:
    async with AgentClient(agent.socket) as client:
        procs = client.procs
        sid = await procs.shell_create()
        assert re.fullmatch(r"sess-[0-9a-f]{16}", sid)
        first = await procs.shell_exec(sid, f"cd {tmp_path} && export GREETING=hello")
        assert (first.output, first.exit_code) == (b"", 0)
        second = await procs.shell_exec(sid, 'greet() { echo "$GREETING from $(pwd)"; }')
        assert second.exit_code == 0
        third = await procs.shell_exec(sid, "greet; false")
        assert third.output == f"hello from {tmp_path}\n".encode() and third.exit_code == 1


async def test_exec_returns_exactly_the_commands_output(agent: AgentProcess) -> None:
    async with AgentClient(agent.socket) as client:
        procs = client.procs
        sid = await procs.shell_create("mine")
        assert sid == "mine"
        cases = {
            "printf 'no newline'": (b"no newline", 0),
            "echo out; echo err >&2; exit_code=7; (exit $exit_code)": (b"out\nerr\n", 7),
            "echo 'it'\"'\"'s'; printf '\\n\\n'": (b"it's\n\n\n", 0),
            "echo 'unclosed": (None, 2),  # a syntax error, not a hung session
            "cat <<EOF\nheredoc $((1+1))\nEOF": (b"heredoc 2\n", 0),
        }
        for command, (output, code) in cases.items():
            result = await procs.shell_exec(sid, command)
            assert result.exit_code == code, (command, result)
            if output is not None:
                assert result.output == output, (command, result)
        assert (await procs.shell_exec(sid, "echo still alive")).output == b"still alive\n"


async def test_read_is_answered_by_input(agent: AgentProcess, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    async with AgentClient(agent.socket) as client:
        procs = client.procs
        sid = await procs.shell_create()
        results = []

        async def ask() -> None:
            command = f'touch {ready}; read -r answer; echo "got $answer"'
            results.append(await procs.shell_exec(sid, command))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(ask)
            await eventually(ready.exists, "the command is waiting for input")
            with pytest.raises(AgentOperationError) as busy:
                await procs.shell_exec(sid, "echo second")
            assert busy.value.code == "bad_request" and "busy" in busy.value.message
            # Output during a command belongs to the command, so input returns none.
            assert await procs.shell_input(sid, "yes please\n") == b""
        assert results[0].output == b"got yes please\n" and results[0].exit_code == 0


async def test_input_returns_unclaimed_output(agent: AgentProcess) -> None:
    async with AgentClient(agent.socket) as client:
        procs = client.procs
        sid = await procs.shell_create()
        assert await procs.shell_input(sid, "echo typed directly\n") == b"typed directly\n"


async def test_exec_stream_and_exit(agent: AgentProcess) -> None:
    async with AgentClient(agent.socket) as client:
        procs = client.procs
        sid = await procs.shell_create()
        async with procs.shell_exec_stream(sid, "for i in 1 2 3; do echo line $i; done") as s:
            out = b"".join([chunk.data async for chunk in s])
        assert out == b"line 1\nline 2\nline 3\n" and s.result == {"exitCode": 0, "timedOut": False}
        result = await procs.shell_exec(sid, "echo bye; exit 5")
        assert (result.output, result.exit_code) == (b"bye\n", 5)
        with pytest.raises(AgentOperationError) as gone:
            await procs.shell_exec(sid, "echo hi")
        assert gone.value.code == "io_error"


async def test_session_timeout_keeps_the_session_busy(agent: AgentProcess, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    async with AgentClient(agent.socket) as client:
        procs = client.procs
        sid = await procs.shell_create()
        wait = f"while [ ! -e {gate} ]; do sleep 0.02; done; echo late"
        timed_out = await procs.shell_exec(sid, wait, time_limit=0.3)
        assert (timed_out.exit_code, timed_out.timed_out) == (124, True)
        gate.write_text("")
        output = bytearray()

        async def late_output() -> bool:
            output.extend(await procs.shell_input(sid, ""))
            return output == b"late\n"

        with anyio.fail_after(20):
            while True:
                if await late_output():
                    break
                await anyio.sleep(0.05)
        assert (await procs.shell_exec(sid, "echo free")).output == b"free\n"


async def test_session_resize_and_close(agent: AgentProcess) -> None:
    async with AgentClient(agent.socket) as client:
        procs = client.procs
        sid = await procs.shell_create(cols=100, rows=30)
        assert (await procs.shell_exec(sid, "stty size")).output == b"30 100\n"
        await procs.shell_resize(sid, 132, 43)
        assert (await procs.shell_exec(sid, "stty size")).output == b"43 132\n"
        pid = int((await procs.shell_exec(sid, "sleep 300 & echo $!")).output)
        await procs.shell_close(sid)
        await eventually(lambda: not is_running(pid), "the session's processes died")
        for call in (procs.shell_exec(sid, "true"), procs.shell_close(sid)):
            with pytest.raises(AgentOperationError) as unknown:
                await call
            assert unknown.value.code == "not_found"
        with pytest.raises(AgentOperationError) as duplicate:
            await procs.shell_create("dup")
            await procs.shell_create("dup")
        assert duplicate.value.code == "bad_request"


# -- PTY sessions ---------------------------------------------------------------------------


async def run_in(procs: ProcessOps, sid: str, stream: OpStream, command: str, answer: str) -> bytes:
    await procs.pty_input(sid, command + "\n")
    return await read_until(stream, answer.encode())


async def test_pty_session_clients_scrollback_resize_delete(agent: AgentProcess) -> None:
    async with AgentClient(agent.socket) as client:
        procs = client.procs
        term = await procs.pty_create(cols=90, rows=20)
        assert [t.id for t in await procs.pty_list()] == [term.id]
        async with procs.pty_attach(term.id) as one, procs.pty_attach(term.id) as two:
            assert one.head == {"id": term.id}
            assert {t.clients for t in await procs.pty_list()} == {2}
            await procs.pty_input(term.id, "echo $((6 * 7))\n")
            await read_until(one, rb"42\r?\n")
            await read_until(two, rb"42\r?\n")
            await procs.pty_resize(term.id, 123, 45)
            await run_in(procs, term.id, one, "stty size", "45 123")
        assert b"42" in await procs.pty_buffer(term.id)
        async with procs.pty_attach(term.id) as late:  # scrollback first
            await read_until(late, rb"45 123")
        pid = int(re.findall(rb"pid=(\d+)", await run_pid(procs, term.id))[-1])
        await procs.pty_close(term.id)
        await eventually(lambda: not is_running(pid), "the terminal's processes died")
        assert await procs.pty_list() == []
        with pytest.raises(AgentOperationError) as unknown:
            await procs.pty_buffer(term.id)
        assert unknown.value.code == "not_found"


async def run_pid(procs: ProcessOps, sid: str) -> bytes:
    async with procs.pty_attach(sid) as stream:
        return await run_in(procs, sid, stream, "sleep 300 & echo pid=$!", r"pid=\d+\r?\n")


async def test_ephemeral_terminal_dies_with_its_stream(agent: AgentProcess) -> None:
    async with AgentClient(agent.socket) as client:
        procs = client.procs
        async with procs.pty_attach(cols=70, rows=10) as stream:
            sid = stream.head["id"]
            out = await run_in(procs, sid, stream, "stty size; echo pid=$$", r"pid=\d+")
            assert b"10 70" in out
            shell = int(re.findall(rb"pid=(\d+)", out)[-1])
            assert await procs.pty_list() == []  # ephemeral terminals are not listed
        await eventually(lambda: not is_running(shell), "the ephemeral shell died")
        with pytest.raises(AgentOperationError):
            await procs.pty_input(sid, "echo\n")


async def test_exited_shell_ends_the_stream(agent: AgentProcess) -> None:
    async with AgentClient(agent.socket) as client:
        procs = client.procs
        term = await procs.pty_create()
        async with procs.pty_attach(term.id) as stream:
            await procs.pty_input(term.id, "exit 4\n")
            with anyio.fail_after(20):
                async for _ in stream:
                    pass
        assert stream.result == {"exitCode": 4}
        assert [(t.id, t.alive) for t in await procs.pty_list()] == [(term.id, False)]


async def test_slow_client_is_detached_not_waited_for(agent: AgentProcess) -> None:
    """A reader that takes nothing slows the terminal only until it is detached."""
    size = 4 * PAUSE_ABOVE
    async with AgentClient(agent.socket) as client:
        procs = client.procs
        term = await procs.pty_create()
        async with procs.pty_attach(term.id) as stuck, procs.pty_attach(term.id) as reading:
            await procs.pty_input(term.id, f"head -c {size} /dev/zero | tr '\\0' x; echo DONE\n")
            # The reading client gets everything, once the stuck one has been dropped.
            out = await read_until(reading, rb"(?<!echo )DONE\r?\n")
            assert out.count(b"x") >= size
            with pytest.raises(AgentOperationError) as dropped:
                with anyio.fail_after(20):
                    async for _ in stuck:
                        pass
        assert dropped.value.code == SLOW_CONSUMER
        assert (await procs.pty_list())[0].alive


async def test_a_slow_client_gets_backpressure_not_dropped(agent: AgentProcess) -> None:
    """A client that reads, however far behind it falls at times, loses nothing."""
    size = 4 * PAUSE_ABOVE
    async with AgentClient(agent.socket) as client:
        procs = client.procs
        term = await procs.pty_create()
        async with procs.pty_attach(term.id) as slow:
            await procs.pty_input(term.id, f"head -c {size} /dev/zero | tr '\\0' x; echo DONE\n")
            seen, tail = 0, b""
            with anyio.fail_after(60):
                async for chunk in slow:
                    seen += chunk.data.count(b"x")
                    tail = (tail + chunk.data)[-64:]
                    await anyio.sleep(0.005)  # a reader slower than the program
                    if re.search(rb"(?<!echo )DONE\r?\n", tail):
                        break
        assert seen >= size
