"""SDK 0.4.0: files, file watch, background commands, PTYs, shell sessions."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from collections.abc import Iterator
from typing import Any

import pytest
from voidrun import Sandbox, VoidRun
from voidrun.api_client.api.execution_api import ExecutionApi
from voidrun.api_client.exceptions import BadRequestException
from voidrun.api_client.models.execute_in_session_request import ExecuteInSessionRequest
from voidrun.api_client.models.session_exec_request import SessionExecRequest
from voidrun.api_client.models.session_exec_stream_request import SessionExecStreamRequest

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def box(server: object) -> Iterator[Sandbox]:
    # module-scoped, so not the monkeypatch fixture; the environment is restored after
    with pytest.MonkeyPatch.context() as env:
        env.setenv("VR_API_URL", server.api)  # type: ignore[attr-defined]
        env.setenv("VR_API_KEY", server.api_key)  # type: ignore[attr-defined]
        sandbox = VoidRun().create_sandbox(name="sdk-dataplane", auto_sleep=False)
        yield sandbox
        sandbox.remove()


def test_files(box: Sandbox) -> None:
    fs = box.fs
    assert fs.create_directory("/work/dir with space").data.data.exit_code == 0
    uploaded = fs.upload_file("/work/dir with space/hello.txt", "héllo\nworld\n")
    assert (
        uploaded.status_code == 200 and "/work/dir with space/hello.txt" in uploaded.data["message"]
    )
    fs.upload_file("/work/blob.bin", bytes(range(256)) * 100)
    assert fs.download_file("/work/blob.bin") == bytes(range(256)) * 100
    assert fs.download_file("/work/dir with space/hello.txt") == "héllo\nworld\n".encode()

    listing = {f.name: f for f in fs.list_files("/work").data}
    assert set(listing) == {"dir with space", "blob.bin"}
    assert listing["dir with space"].is_dir and listing["blob.bin"].size == 25600
    assert isinstance(listing["blob.bin"].mode, str)

    assert fs.create_file("/work/empty.txt").data.data.exit_code == 0
    assert fs.download_file("/work/empty.txt") == b""
    assert fs.copy_file("/work/dir with space", "/work/copy").data.data.exit_code == 0
    assert fs.move_file("/work/copy/hello.txt", "/work/moved.txt").data.data.exit_code == 0
    assert fs.head_tail("/work/moved.txt", lines=1).data.data.stdout == "héllo\n"
    assert fs.head_tail("/work/moved.txt", lines=1, head=False).data.data.stdout == "world\n"
    assert fs.change_permissions("/work/moved.txt", "755").data.data.exit_code == 0
    stat = json.loads(fs.stat_file("/work/moved.txt").data.data.stdout)
    assert stat["size"] == len("héllo\nworld\n".encode()) and stat["type"] == "regular file"
    assert int(stat["mode"], 16) & 0o777 == 0o755
    assert "/work" in fs.disk_usage("/work").data.data.stdout
    found = set(fs.search_files("/work", "*.txt").data.data.stdout.split())
    assert {"/work/moved.txt", "/work/empty.txt"} <= found
    missing = fs.stat_file("/work/nope")
    assert missing.data.data.exit_code != 0 and missing.data.data.stderr

    assert fs.compress_file("/work/dir with space").data.data.exit_code == 0
    assert fs.extract_archive("/work/dir with space.tar.gz", "/work/out").data.data.exit_code == 0
    assert fs.download_file("/work/out/dir with space/hello.txt") == "héllo\nworld\n".encode()
    archive = fs.download_file("/work/dir with space.tar.gz")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert any(name.endswith("hello.txt") for name in tar.getnames())
    assert fs.delete_file("/work/out").data.data.exit_code == 0
    assert "out" not in {f.name for f in fs.list_files("/work").data}


def test_watch(box: Sandbox) -> None:
    events: list[dict[str, Any]] = []

    async def scenario() -> None:
        box.exec("mkdir -p /watched/sub")
        watcher = await box.fs.watch("/watched", on_event=events.append)
        try:
            box.exec(
                "echo a > /watched/sub/f && mv /watched/sub/f /watched/sub/g && rm /watched/sub/g"
            )
            for _ in range(100):
                if any(e["type"] == "deleted" for e in events):
                    break
                await asyncio.sleep(0.05)
        finally:
            watcher.close()
            await asyncio.sleep(0.1)

    asyncio.run(scenario())
    kinds = [(e["type"], e["path"]) for e in events]
    assert ("created", "/watched/sub/f") in kinds
    assert ("renamed", "/watched/sub/g") in kinds and ("deleted", "/watched/sub/g") in kinds
    renamed = next(e for e in events if e["type"] == "renamed")
    assert renamed["oldPath"] == "/watched/sub/f" and renamed["timestamp"]


def test_background_commands(box: Sandbox) -> None:
    commands = box.commands
    pid = commands.run("echo first; sleep 1; echo second; exit 7").data.pid
    assert isinstance(pid, int)
    listed = {p.pid: p for p in commands.list().data}
    assert listed[pid].command.startswith("echo first")
    out: list[str] = []
    exits: list[dict[str, Any]] = []
    commands.connect(pid, on_stdout=out.append, on_exit=exits.append)
    assert out == ["first", "second"] and exits[0]["exitCode"] == 7
    assert commands.wait(pid).data.exit_code == 7
    done = {p.pid: p for p in commands.list().data}[pid]
    assert done.running is False and done.exit_code == 7

    sleeper = commands.run("sleep 300").data.pid
    assert commands.kill(sleeper).data.success is True
    assert commands.wait(sleeper).data.exit_code == 137


def test_pty(box: Sandbox) -> None:
    pty = box.pty

    async def scenario() -> None:
        created = pty.create_session(cols=100, rows=30)
        session_id = created.data.data.session_id
        assert session_id and created.data.data.created_at
        assert session_id in [s.id for s in pty.list().data.sessions]
        seen: list[str] = []
        session = await pty.connect(session_id=session_id, on_data=seen.append)

        async def run(command: str, expected: str) -> None:
            """``run_command`` returns what came within its own short wait; a slow guest
            (a microVM under emulation) may answer after it: the stream has it then."""
            output = await session.run_command(command)
            for _ in range(200):
                if expected in output + "".join(seen):
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"{expected!r} never came: {output + ''.join(seen)!r}")

        await run("echo pty-$((40+2))", "pty-42")
        await session.resize(120, 40)
        await run("stty size", "40 120")
        api = ExecutionApi(box._api_client)
        api.execute_in_pty_session(
            box.id, session_id, ExecuteInSessionRequest(command="echo via-api")
        )
        for _ in range(100):
            if "via-api" in api.get_pty_buffer(box.id, session_id).data.output:
                break
            await asyncio.sleep(0.05)
        assert "via-api" in api.get_pty_buffer(box.id, session_id).data.output
        await session.close()
        assert pty.delete_session(session_id).status_code == 200
        assert session_id not in [s.id for s in pty.list().data.sessions]

        ephemeral = await pty.connect()
        assert "root" in await ephemeral.run_command("whoami")
        await ephemeral.close()

    asyncio.run(scenario())


def test_shell_sessions(box: Sandbox) -> None:
    api = ExecutionApi(box._api_client)
    created = api.session_exec(box.id, SessionExecRequest(action="create"))
    sid = created.session_id
    assert created.success and sid.startswith("sess-")

    def run(command: str) -> Any:
        return api.session_exec(
            box.id, SessionExecRequest(action="exec", sessionId=sid, command=command)
        )

    assert (
        run("cd /tmp && export GREETING=hi && greet() { echo $GREETING from $(pwd); }").exit_code
        == 0
    )
    assert run("greet").output.strip() == "hi from /tmp"
    assert run("false").exit_code == 1
    streamed = api.session_exec_stream(
        box.id, SessionExecStreamRequest(sessionId=sid, command="echo streamed")
    )
    lines = [json.loads(line) for line in str(streamed).strip().splitlines()]
    assert {"type": "exit", "exitCode": 0} in lines
    assert any(line.get("data", "").strip() == "streamed" for line in lines)
    assert api.session_exec(box.id, SessionExecRequest(action="close", sessionId=sid)).success
    with pytest.raises(BadRequestException):
        run("true")
