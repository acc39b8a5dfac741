"""Commands and PTYs through the E2B SDK: ``process.Process`` over Connect RPC."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from e2b import CommandExitException, NotFoundException, PtySize, Sandbox, TimeoutException

from tests.support.server import ServerProcess


@pytest.fixture
def sandbox(e2b_env: ServerProcess) -> Iterator[Sandbox]:
    box = Sandbox.create()
    yield box
    box.kill()


def test_run_reports_stdout_stderr_and_exit_code(sandbox: Sandbox) -> None:
    result = sandbox.commands.run("echo out; echo err >&2; echo $FOO", envs={"FOO": "bar"})
    assert result.exit_code == 0
    assert result.stdout == "out\nbar\n"
    assert result.stderr == "err\n"


def test_non_zero_exit_raises(sandbox: Sandbox) -> None:
    with pytest.raises(CommandExitException) as caught:
        sandbox.commands.run("echo failing; exit 3")
    assert caught.value.exit_code == 3
    assert caught.value.stdout == "failing\n"


def test_cwd_and_streamed_output(sandbox: Sandbox) -> None:
    seen: list[str] = []
    result = sandbox.commands.run(
        "pwd; for i in 1 2 3; do echo $i; done", cwd="/tmp", on_stdout=seen.append
    )
    assert result.stdout == "/tmp\n1\n2\n3\n"
    assert "".join(seen) == result.stdout


def test_background_stdin_list_and_kill(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run(
        "while read line; do echo got $line; done", background=True, stdin=True
    )
    sandbox.commands.send_stdin(handle.pid, "hello\n")
    listed = {p.pid: p for p in sandbox.commands.list()}
    assert handle.pid in listed
    assert listed[handle.pid].cmd == "/bin/bash"
    assert listed[handle.pid].args[-1] == "while read line; do echo got $line; done"
    for stdout, _, _ in handle:  # the echo arrived: the command read its stdin
        if stdout and "got hello" in stdout:
            break
    assert sandbox.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitException):
        handle.wait()
    assert handle.pid not in {p.pid for p in sandbox.commands.list()}
    assert sandbox.commands.kill(handle.pid) is False


def test_tagged_command_is_listed_with_its_tag(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("sleep 600", background=True, envs={"A": "1"}, cwd="/tmp")
    found = next(p for p in sandbox.commands.list() if p.pid == handle.pid)
    assert found.envs == {"A": "1"}
    assert found.cwd == "/tmp"
    handle.kill()


def test_close_stdin_ends_a_reader(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("wc -c", background=True, stdin=True)
    sandbox.commands.send_stdin(handle.pid, "12345")
    sandbox.commands.close_stdin(handle.pid)
    assert handle.wait().stdout.strip() == "5"


def test_connect_from_a_second_client(e2b_env: ServerProcess, sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("read line; echo got $line", background=True, stdin=True)
    other = Sandbox.connect(sandbox.sandbox_id)
    follower = other.commands.connect(handle.pid)
    other.commands.send_stdin(handle.pid, "it\n")
    assert follower.wait().stdout == "got it\n"


def test_pty_create_send_resize(sandbox: Sandbox) -> None:
    terminal = sandbox.pty.create(PtySize(rows=24, cols=80))
    sandbox.pty.resize(terminal.pid, PtySize(rows=30, cols=100))
    sandbox.pty.send_stdin(terminal.pid, b"stty size; echo marker-$((6*7))\n")
    sandbox.pty.stream_input(terminal.pid, [b"echo streamed-", b"$((3*3))\n", b"exit\n"])
    output = bytearray()
    terminal.wait(on_pty=output.extend)
    assert b"marker-42" in output
    assert b"streamed-9" in output
    assert b"30 100" in output


def test_command_timeout_raises_and_kills_it(sandbox: Sandbox) -> None:
    command = "echo started > /tmp/t.txt; sleep 600"
    with pytest.raises(TimeoutException):
        sandbox.commands.run(command, timeout=1)
    assert sandbox.files.read("/tmp/t.txt") == "started\n"

    def still_running() -> bool:
        return any(p.args[-1:] == [command] for p in sandbox.commands.list())

    for _ in range(100):  # the server kills it as the call ends; the client does not wait
        if not still_running():
            break
        time.sleep(0.1)
    assert not still_running()


def test_pty_kill_and_list(sandbox: Sandbox) -> None:
    terminal = sandbox.pty.create(PtySize(rows=24, cols=80))
    assert terminal.pid in {p.pid for p in sandbox.commands.list()}
    assert sandbox.pty.kill(terminal.pid) is True
    try:
        terminal.wait()
    except CommandExitException:
        pass  # a killed terminal may report a non-zero exit
    assert terminal.pid not in {p.pid for p in sandbox.commands.list()}
    assert sandbox.pty.kill(terminal.pid) is False


def test_unknown_processes_are_not_found(sandbox: Sandbox) -> None:
    with pytest.raises(NotFoundException):
        sandbox.commands.connect(99999)
    with pytest.raises(NotFoundException):
        sandbox.commands.send_stdin(99999, "x")
    with pytest.raises(NotFoundException):
        sandbox.pty.resize(99999, PtySize(rows=3, cols=3))
