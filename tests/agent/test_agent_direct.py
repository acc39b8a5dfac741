"""Plain commands run without the shell (``agent.direct``), everything else through it, and
either way the command sees what ``bash -c`` would have given it.

The end-to-end tests start the agent with a ``bash`` earlier on its ``PATH`` that logs every
invocation and then runs the real bash: a command that reaches the log went through the shell.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.agent.agent_helpers import AgentFactory, AgentProcess, eventually
from voidrun_server.agent.context import BASE_ENV
from voidrun_server.agent.direct import DirectExec, bash_environment, plain_words
from voidrun_server.agentclient import AgentClient

REAL_BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(
    REAL_BASH is None or not subprocess.run(
        [REAL_BASH, "-c", 'case "$BASH_VERSION" in 5.2.*) exit 0;; esac; exit 1'], check=False
    ).returncode == 0,
    reason="direct exec is verified against bash 5.2, which this host lacks",
)  # fmt: skip


class LoggedShell:
    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.bin.mkdir()
        self.log = root / "shell.log"
        self.log.write_text("")
        wrapper = self.bin / "bash"
        wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {self.log}\nexec {REAL_BASH} "$@"\n')
        wrapper.chmod(0o755)
        self.path = f"{self.bin}:{BASE_ENV['PATH']}"

    def runs(self) -> list[str]:
        return self.log.read_text().splitlines()


@pytest.fixture
def shell_agent(start_agent: AgentFactory, tmp_path: Path) -> tuple[LoggedShell, AgentProcess]:
    shell = LoggedShell(tmp_path)
    env_file = tmp_path / "env.json"
    env_file.write_text(json.dumps({"PATH": shell.path}))
    return shell, start_agent(env_file=env_file)


@asynccontextmanager
async def connected(shell: LoggedShell, agent: AgentProcess) -> AsyncIterator[AgentClient]:
    async with AgentClient(agent.socket) as client:
        await client.exec("true")  # the first plain command asks the shell for its version
        await eventually(lambda: any("BASH_VERSION" in line for line in shell.runs()), "probe")
        for _ in range(200):  # until the answer is in: then plain commands skip the shell
            before = len(shell.runs())
            await client.exec("true")
            if len(shell.runs()) == before:
                break
        else:
            raise AssertionError(f"plain commands still go through the shell: {shell.runs()}")
        yield client


DIRECT = {
    "echo a b": (0, b"a b\n", b""),
    "true": (0, b"", b""),
    "false": (1, b"", b""),
    "  echo   spaced    words ": (0, b"spaced words\n", b""),
    "/bin/echo x=1 y@z 50% a,b c:d e+f": (0, b"x=1 y@z 50% a,b c:d e+f\n", b""),
    "ls -d /": (0, b"/\n", b""),
}
THROUGH_THE_SHELL = {
    "echo $HOME": (0, b"/root\n" if os.path.isdir("/root") else None, b""),
    "cd /tmp && pwd": (0, b"/tmp\n", b""),
    "echo /et*": (0, b"/etc\n", b""),
    "echo -n x": (0, b"x", b""),
    "umask 0077": (0, b"", b""),
    "echo 'quoted'": (0, b"quoted\n", b""),
    "A=1 printenv A": (0, b"1\n", b""),
    "printenv HOME": (0, None, b""),
    "pwd": (0, None, b""),
}


Shell = tuple[LoggedShell, AgentProcess]


async def test_plain_commands_skip_the_shell(shell_agent: Shell) -> None:
    shell, agent = shell_agent
    async with connected(shell, agent) as client:
        for command, (code, stdout, stderr) in DIRECT.items():
            before = shell.runs()
            result = await client.exec(command)
            assert (result.exit_code, result.stdout, result.stderr) == (code, stdout, stderr)
            assert shell.runs() == before, f"{command!r} went through the shell"


async def test_everything_else_goes_through_the_shell(shell_agent: Shell) -> None:
    shell, agent = shell_agent
    async with connected(shell, agent) as client:
        for command, (code, stdout, stderr) in THROUGH_THE_SHELL.items():
            result = await client.exec(command)
            assert result.exit_code == code and result.stderr == stderr, (command, result)
            assert stdout is None or result.stdout == stdout, (command, result)
            assert shell.runs()[-1] == f"-c {command}", f"{command!r} skipped the shell"


async def test_unknown_commands_get_the_shells_answer(shell_agent: Shell) -> None:
    shell, agent = shell_agent
    async with connected(shell, agent) as client:
        result = await client.exec("nosuchcmd --flag")
    assert result.exit_code == 127
    assert result.stderr.endswith(b"nosuchcmd: command not found\n")
    assert shell.runs()[-1] == "-c nosuchcmd --flag"


async def test_a_failed_exec_falls_back_to_the_shell(shell_agent: Shell, tmp_path: Path) -> None:
    shell, agent = shell_agent
    tools = tmp_path / "tools"
    tools.mkdir()
    script = tools / "noshebang"
    script.write_text("echo run by the shell\n")  # execve() refuses it: ENOEXEC
    script.chmod(0o755)
    async with connected(shell, agent) as client:
        result = await client.exec("noshebang", env={"PATH": f"{tools}:{shell.path}"})
    assert (result.exit_code, result.stdout) == (0, b"run by the shell\n")
    assert shell.runs()[-1] == "-c noshebang"


async def test_variables_bash_acts_on_send_commands_through_the_shell(
    shell_agent: Shell, tmp_path: Path
) -> None:
    shell, agent = shell_agent
    startup = tmp_path / "startup.sh"
    startup.write_text("echo sourced first\n")
    async with connected(shell, agent) as client:
        result = await client.exec("echo a", env={"BASH_ENV": str(startup)})
        assert result.stdout == b"sourced first\na\n"
        assert shell.runs()[-1] == "-c echo a"
        for env in ({"SHLVL": "999"}, {"IFS": ":"}, {"BASH_FUNC_f%%": "() { :; }"}):
            before = len(shell.runs())
            await client.exec("true", env=env)
            assert len(shell.runs()) == before + 1, env


def bash_env(command: str, env: dict[str, str], cwd: Path) -> set[str]:
    assert REAL_BASH is not None
    done = subprocess.run(
        [REAL_BASH, "-c", command], env=env, cwd=cwd, capture_output=True, check=True
    )
    return set(done.stdout.decode().split("\0"))


@pytest.mark.parametrize("extra", [{}, {"SHLVL": "3"}, {"PWD": "LINK"}, {"PWD": "/nonexistent"}])
async def test_the_program_sees_the_environment_bash_gives_it(
    shell_agent: Shell, tmp_path: Path, extra: dict[str, str]
) -> None:
    shell, agent = shell_agent
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "link").symlink_to(work)
    extra = {k: str(tmp_path / "link") if v == "LINK" else v for k, v in extra.items()}
    request = {"GREETING": "hello world", **extra}
    command = "cat /proc/self/environ"
    async with connected(shell, agent) as client:
        before = len(shell.runs())
        result = await client.exec(command, env=request, cwd=str(work))
    assert len(shell.runs()) == before  # direct
    expected = bash_env(command, {**BASE_ENV, "PATH": shell.path, **request}, work)
    assert set(result.stdout.decode().split("\0")) == expected


# -- the decisions, without an agent ---------------------------------------------------------


def verified(shell: str = "/bin/bash") -> DirectExec:
    direct = DirectExec(SimpleNamespace(shell=shell))  # type: ignore[arg-type]
    direct.verified = True  # as if the shell had answered 5.2.x
    return direct


def test_plain_words() -> None:
    assert plain_words("ls  -la /tmp ") == ["ls", "-la", "/tmp"]
    assert plain_words("git log --format=%H@x a,b:c+d") == [
        "git",
        "log",
        "--format=%H@x",
        "a,b:c+d",
    ]
    for not_plain in ["", "   ", "ls\t/", "ls\n", "ls *", "echo $x", "a;b", "a|b", "a&", "~/x",
                      "echo 'a'", 'echo "a"', "a>b", "echo \\n", "ls ~", "{a,b}", "é"]:  # fmt: skip
        assert plain_words(not_plain) is None, not_plain


@pytest.mark.parametrize(
    "command",
    [
        "cd /tmp",
        "export A=1",
        "FOO=1 ls",
        "time ls",
        "exec ls",
        "echo -n a",
        "true --help",
        "nosuchprogram",
        "env",
        "printenv",
        "kill 1",
        "pwd",
        "test a",
        "if",
        "[[",
        "source x",
        ". x",
        "ls /tmp/*",
    ],  # fmt: skip
)
def test_what_stays_with_the_shell(command: str) -> None:
    assert verified().plan(command, {"PATH": "/usr/bin:/bin"}, "/") is None


def test_what_runs_directly() -> None:
    direct = verified()
    plan = direct.plan("ls -la /", {"PATH": "/nonexistent:/usr/bin:/bin", "X": "1"}, "/")
    assert plan is not None
    program, argv, env = plan
    assert os.path.samefile(program, shutil.which("ls") or "")
    assert program.startswith("/usr/bin/") and argv == ["ls", "-la", "/"]
    assert env == {"PATH": "/nonexistent:/usr/bin:/bin", "X": "1", "PWD": "/", "SHLVL": "0",
                   "_": program}  # fmt: skip
    assert direct.plan("echo a b", {"PATH": "/usr/bin:/bin"}, "/") is not None
    assert direct.plan("./run.sh x", {"PATH": "/usr/bin"}, "/")[0] == "./run.sh"  # type: ignore[index]
    assert direct.plan("ls", {"PATH": ":/usr/bin"}, "/") is None  # an entry meaning "."
    assert direct.plan("ls", {"PATH": "bin:/usr/bin"}, "/") is None
    assert direct.plan("ls", {}, "/") is None


def test_only_a_verified_bash_is_bypassed() -> None:
    assert DirectExec(SimpleNamespace(shell="/bin/sh")).verified is False  # type: ignore[arg-type]
    assert DirectExec(SimpleNamespace(shell="/bin/bash")).verified is None  # type: ignore[arg-type]


def test_bash_environment_rules(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(tmp_path)
    cwd = os.path.realpath(tmp_path)

    def shlvl(value: str | None) -> str | None:
        env = {} if value is None else {"SHLVL": value}
        result = bash_environment(env, cwd, "/bin/x")
        return None if result is None else result["SHLVL"]

    assert [shlvl(v) for v in (None, "0", "7", "007", "998")] == ["0", "0", "7", "7", "998"]
    assert [shlvl(v) for v in ("999", "-1", "x", " 1", "٣")] == [None] * 5
    link = str(tmp_path / "link")
    assert bash_environment({"PWD": link}, cwd, "/x") == {"PWD": link, "SHLVL": "0", "_": "/x"}
    assert bash_environment({"PWD": "/"}, cwd, "/x")["PWD"] == cwd  # type: ignore[index]
    assert bash_environment({}, link, "/x") is None  # bash would print getcwd(): not guessed
    assert bash_environment({"a-b": "1"}, cwd, "/x") is None
    assert bash_environment({"BASHOPTS": "x"}, cwd, "/x") is None
