"""What lets the agent work in any image: the shell it picks (bash, else sh, else none), plain
commands without a shell, shell sessions that stay non-interactive in ash and dash, and users
from the image's /etc/passwd."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.agent.agent_helpers import AgentProcess
from voidrun_server.agent import users
from voidrun_server.agent.context import find_shell, no_shell
from voidrun_server.agent.direct import without_shell
from voidrun_server.agent.protocol import OpError
from voidrun_server.agentclient import AgentClient


def _program(directory: Path, name: str) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/true\n")
    path.chmod(0o755)
    return str(path)


def test_find_shell_prefers_bash_then_sh(tmp_path: Path) -> None:
    bash = _program(tmp_path / "a", "bash")
    sh = _program(tmp_path / "b", "sh")
    assert find_shell(f"{tmp_path / 'b'}:{tmp_path / 'a'}") == bash
    only_sh = find_shell(str(tmp_path / "b"))
    assert only_sh in ("/bin/sh", sh)  # /bin/sh first when the host has one
    if not os.path.exists("/bin/sh"):
        assert only_sh == sh


def test_no_shell_message_names_what_to_install() -> None:
    text = no_shell("a terminal (`sh -l`)")
    assert "no shell" in text and "install bash" in text and "sh -l" in text


def test_plain_commands_run_without_a_shell(tmp_path: Path) -> None:
    program = _program(tmp_path / "bin", "tool")
    env = {"PATH": str(tmp_path / "bin")}
    assert without_shell("tool --flag x", env) == (program, ["tool", "--flag", "x"])
    assert without_shell(f"{program} y", env) == (program, [program, "y"])
    assert without_shell("echo hi", {"PATH": "/usr/bin:/bin"}) is not None  # a program too
    for needs_a_shell in ("tool | cat", "cd /tmp", "A=1 tool", "tool $HOME", "missing", "exit 1"):
        assert without_shell(needs_a_shell, env) is None, needs_a_shell


@pytest.fixture
def image_etc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n"
        "app:x:1000:1000:app:/home/app:/bin/sh\n"
        "broken line\n"
        "huge:x:70000:1:::/bin/sh\n"
        "nohome:x:1001:1001::::\n"
    )
    (tmp_path / "group").write_text("root:x:0:\napp:x:1000:\nstaff:x:50:app,other\nweb:x:33:\n")
    monkeypatch.setattr(users, "PASSWD", str(tmp_path / "passwd"))
    monkeypatch.setattr(users, "GROUP", str(tmp_path / "group"))
    users._CACHE.clear()
    return tmp_path


def test_users_resolve_names_ids_and_groups(image_etc: Path) -> None:
    assert users.resolve(None) is None and users.resolve("root") is None
    assert users.resolve("0") is None and users.resolve("root:0") is None
    app = users.resolve("app")
    assert app is not None
    assert (app.uid, app.gid, app.groups, app.home) == (1000, 1000, [50, 1000], "/home/app")
    by_uid = users.resolve("1000")
    assert by_uid is not None and (by_uid.name, by_uid.uid) == ("app", 1000)
    web = users.resolve("app:web")
    assert web is not None and (web.gid, web.groups) == (33, [33, 50])
    numeric = users.resolve("4321:77")
    assert numeric is not None and (numeric.uid, numeric.gid, numeric.home) == (4321, 77, "/")
    unknown_group = users.resolve("4321")
    assert unknown_group is not None and unknown_group.gid == 0
    nohome = users.resolve("nohome")
    assert nohome is not None and nohome.home == "/"
    root_in_group = users.resolve("root:web")
    assert root_in_group is not None and (root_in_group.uid, root_in_group.gid) == (0, 33)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("ghost", "not in the image's"),
        ("app:ghosts", "group 'ghosts' is not in"),
        ("huge", "not in the image's"),  # its uid is outside the sandbox's ids: row skipped
        ("70000", "outside the sandbox's ids"),
        (":1", "USER or USER:GROUP"),
        ("app:", "USER or USER:GROUP"),
    ],
)
def test_users_refusals_say_why(image_etc: Path, spec: str, words: str) -> None:
    with pytest.raises(OpError) as refused:
        users.resolve(spec)
    assert words in refused.value.message


def test_home_follows_the_user_unless_set(image_etc: Path) -> None:
    env = {"HOME": "/root"}
    assert users.for_request({"user": "app"}, env, {}) is not None and env["HOME"] == "/home/app"
    env = {"HOME": "/root"}
    users.for_request({"user": "app"}, env, {"HOME": "/root"})
    assert env["HOME"] == "/root"  # the request set it
    env = {"HOME": "/data"}
    users.for_request({"user": "app"}, env, {})
    assert env["HOME"] == "/data"  # the image set it


POSIX_SHELLS = [name for name in ("dash", "busybox") if shutil.which(name)]


@pytest.mark.skipif(not POSIX_SHELLS, reason="neither dash nor busybox is installed")
async def test_sh_sessions_are_not_interactive(agent: AgentProcess, tmp_path: Path) -> None:
    """ash and dash decide on stdin and stdout (bash on stdin and stderr): with either on the
    terminal they would print a prompt and echo every command into the output."""
    shells = []
    if shutil.which("dash"):
        shells.append("dash")
    if shutil.which("busybox"):
        link = tmp_path / "ash"
        link.symlink_to(shutil.which("busybox") or "")  # busybox runs the applet named argv[0]
        shells.append(str(link))
    async with AgentClient(agent.socket) as client:
        for shell in shells:
            sid = await client.procs.shell_create(shell=shell)
            first = await client.procs.shell_exec(sid, "cd /tmp; X=5")
            assert (first.output, first.exit_code) == (b"", 0), shell
            result = await client.procs.shell_exec(sid, 'echo "$X $PWD [$-]"; (exit 3)')
            assert result.exit_code == 3, shell
            flags = result.output.decode().rsplit("[", 1)[1]
            assert result.output.startswith(b"5 /tmp [") and "i" not in flags, (shell, result)
            await client.procs.shell_close(sid)
