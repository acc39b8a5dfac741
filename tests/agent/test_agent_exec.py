"""exec through the real client against a real agent process."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import anyio
import pytest

from tests.agent.agent_helpers import (
    AgentFactory,
    AgentProcess,
    eventually,
    is_running,
    live_members,
    proc_stat,
)
from voidrun_server.agent.protocol import PROTOCOL_VERSION
from voidrun_server.agentclient import AgentClient, AgentOperationError, ExecResult


async def test_ping_and_hello(agent: AgentProcess) -> None:
    async with AgentClient(agent.socket) as client:
        await client.ping()
        assert client.agent_version == PROTOCOL_VERSION == 2
        assert {"ping", "env.set", "exec", "exec.stream", "file.read", "file.write"} <= (
            client.agent_ops
        )


@pytest.mark.parametrize(
    ("command", "code"),
    [("true", 0), ("false", 1), ("exit 42", 42), ("no-such-command-xyz", 127), ("kill -9 $$", 137)],
)
async def test_exit_codes(agent: AgentProcess, command: str, code: int) -> None:
    async with AgentClient(agent.socket) as client:
        result = await client.exec(command)
    assert result.exit_code == code
    assert not result.timed_out


async def test_stdout_and_stderr_are_separate(agent: AgentProcess) -> None:
    async with AgentClient(agent.socket) as client:
        result = await client.exec("echo out; echo err >&2; echo out2")
    assert result == ExecResult(exit_code=0, stdout=b"out\nout2\n", stderr=b"err\n")
    assert result.stdout_text == "out\nout2\n"


async def test_stdin_is_dev_null(agent: AgentProcess) -> None:
    async with AgentClient(agent.socket) as client:
        result = await client.exec("cat; echo eof")
    assert result.stdout == b"eof\n"


async def test_env_precedence(start_agent: AgentFactory, tmp_path: Path) -> None:
    env_file = tmp_path / "env.json"
    env_file.write_text(json.dumps({"FROM_FILE": "file", "A": "file"}))
    agent = start_agent(env_file=env_file, env={"PATH": "/usr/bin:/bin", "LEAK": "host"})
    show = 'echo "$A|$B|$C|$HOME|$LANG|$TERM|$FROM_FILE|${LEAK-unset}|$PATH"'
    async with AgentClient(agent.socket) as client:
        base = await client.exec(show)
        await client.set_env({"A": "default", "B": "default", "LANG": "default"})
        merged = await client.exec(show, env={"B": "request", "C": "request", "HOME": "/tmp"})
    path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert base.stdout_text == f"file|||/root|C.UTF-8|xterm-256color|file|unset|{path}\n"
    assert merged.stdout_text == (
        f"default|request|request|/tmp|default|xterm-256color|file|unset|{path}\n"
    )


async def test_env_defaults_outlive_the_connection(agent: AgentProcess) -> None:
    async with AgentClient(agent.socket) as client:
        await client.set_env({"SANDBOX_VAR": "kept"})
    async with AgentClient(agent.socket) as client:
        result = await client.exec("echo $SANDBOX_VAR")
    assert result.stdout == b"kept\n"


async def test_cwd(agent: AgentProcess, tmp_path: Path) -> None:
    async with AgentClient(agent.socket) as client:
        explicit = await client.exec("pwd", cwd=str(tmp_path))
        home = await client.exec("pwd", env={"HOME": str(tmp_path)})
        no_home = await client.exec("pwd", env={"HOME": str(tmp_path / "missing")})
    assert explicit.stdout_text == f"{tmp_path}\n"
    assert home.stdout_text == f"{tmp_path}\n"
    assert no_home.stdout_text == "/\n"


async def test_missing_cwd_is_an_error_not_a_crash(agent: AgentProcess, tmp_path: Path) -> None:
    async with AgentClient(agent.socket) as client:
        with pytest.raises(AgentOperationError) as info:
            await client.exec("pwd", cwd=str(tmp_path / "nope"))
        assert info.value.code == "not_found"
        assert "nope" in info.value.message
        with pytest.raises(AgentOperationError) as info:
            await client.exec("pwd", cwd="relative/dir")
        assert info.value.code == "bad_request"
        await client.ping()


async def test_timeout_kills_the_whole_process_group(agent: AgentProcess) -> None:
    async with AgentClient(agent.socket) as client:
        result = await client.exec("echo $$; sleep 100 & sleep 100", timeout=0.5)
    assert result.exit_code == 124
    assert result.timed_out
    assert "timed out" in result.stderr_text
    pgid = int(result.stdout)
    await eventually(lambda: not live_members(pgid), f"no process is left in group {pgid}")


async def test_large_output_round_trip(agent: AgentProcess, tmp_path: Path) -> None:
    blob = os.urandom(10 * 1024 * 1024)
    (tmp_path / "blob").write_bytes(blob)
    async with AgentClient(agent.socket) as client:
        result = await client.exec(f"cat {tmp_path / 'blob'}; cat {tmp_path / 'blob'} >&2")
    assert result.stdout == blob
    assert result.stderr == blob
    assert not result.stdout_truncated


async def test_binary_output_survives(agent: AgentProcess) -> None:
    async with AgentClient(agent.socket) as client:
        result = await client.exec(r"printf '\377\376\000abc\200'")
    assert result.stdout == b"\xff\xfe\x00abc\x80"
    assert result.stdout_text == "\ufffd\ufffd\x00abc\ufffd"


async def test_output_beyond_the_cap_is_dropped_and_flagged(agent: AgentProcess) -> None:
    async with AgentClient(agent.socket) as client:
        result = await client.exec(
            "head -c 5000000 /dev/zero; echo done >&2", max_output=1000, timeout=60
        )
    assert result.exit_code == 0  # kept draining: the writer never blocked
    assert result.stdout == b"\0" * 1000
    assert result.stdout_truncated
    assert result.stderr == b"done\n"
    assert not result.stderr_truncated


async def test_hundred_concurrent_execs_share_one_connection(agent: AgentProcess) -> None:
    results: dict[int, ExecResult] = {}
    async with AgentClient(agent.socket) as client:

        async def run(i: int) -> None:
            results[i] = await client.exec(f"echo out{i}; echo err{i} >&2; exit {i % 7}")

        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(run, i)
    for i in range(100):
        assert results[i] == ExecResult(
            exit_code=i % 7, stdout=f"out{i}\n".encode(), stderr=f"err{i}\n".encode()
        )


async def test_orphans_are_reaped(agent: AgentProcess) -> None:
    async with AgentClient(agent.socket) as client:
        result = await client.exec("sleep 100 >/dev/null 2>&1 & echo $!")
        orphan = int(result.stdout)
        try:
            stat = proc_stat(orphan)
            assert stat is not None
            assert stat[1] == agent.pid  # adopted by the agent, like init would
        finally:
            os.kill(orphan, signal.SIGKILL)
        await eventually(lambda: proc_stat(orphan) is None, "the agent reaped the orphan")
        await client.ping()


async def test_cancelled_exec_kills_the_command(agent: AgentProcess, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    async with AgentClient(agent.socket) as client:
        with anyio.move_on_after(30) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.exec, f"echo $$ > {pid_file}; exec sleep 100")
                await eventually(
                    lambda: pid_file.exists() and pid_file.read_text().strip() != "", "started"
                )
                tg.cancel_scope.cancel()
        assert not scope.cancelled_caught
        pid = int(pid_file.read_text())
        await eventually(lambda: not is_running(pid), "the cancelled command is killed")
        await client.ping()


async def test_errors_leave_the_client_unwrapped(agent: AgentProcess) -> None:
    with pytest.raises(ValueError, match="from the body"):
        async with AgentClient(agent.socket) as client:
            await client.ping()
            raise ValueError("from the body")


async def test_a_caller_deadline_kills_the_command(agent: AgentProcess, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    async with AgentClient(agent.socket) as client:
        with pytest.raises(TimeoutError):
            with anyio.fail_after(1):
                await client.exec(f"echo $$ > {pid_file}; exec sleep 100")
        await eventually(lambda: pid_file.exists() and pid_file.read_text() != "", "started")
        pid = int(pid_file.read_text())
        await eventually(lambda: not is_running(pid), "the command is killed")
        assert (await client.exec("echo still usable")).stdout == b"still usable\n"


async def test_vm_identity_only_in_a_vm(agent: AgentProcess) -> None:
    """The op that renames a restored microvm clone and sets its clock must refuse in an agent
    that is not a VM's init (here: a root process on the test host)."""
    before = os.uname().nodename
    try:
        async with AgentClient(agent.socket) as client:
            assert "vm.identity" in client.agent_ops
            with pytest.raises(AgentOperationError) as refused:
                # the clock is now's: harmless to the host even if the guard were gone
                await client.vm_identity(
                    hostname="not-this-host", clock=time.time(), seed=os.urandom(64), env={"A": "1"}
                )
            assert refused.value.code == "permission_denied"
            assert (await client.exec("echo ${A:-unset}")).stdout == b"unset\n"
        assert os.uname().nodename == before
    finally:
        if os.uname().nodename != before:
            socket.sethostname(before)
