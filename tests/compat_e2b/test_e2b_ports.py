"""Other ports of a sandbox through the gateway (``E2b-Sandbox-Port``), the interpreter hook
of port 49999, timeouts that end sandboxes, and the async SDK."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from e2b import AsyncSandbox, Sandbox, SandboxNotFoundException, SandboxState

from tests.support.server import ServerProcess
from voidrun_server import interpreter


@pytest.fixture
def sandbox(e2b_env: ServerProcess) -> Iterator[Sandbox]:
    box = Sandbox.create()
    yield box
    box.kill()


def _headers(box: Sandbox, port: int) -> dict[str, str]:
    return {
        "E2b-Sandbox-Id": box.sandbox_id,
        "E2b-Sandbox-Port": str(port),
        "X-Access-Token": box._envd_access_token or "",
    }


def _get_until_served(url: str, headers: dict[str, str]) -> httpx.Response:
    """The sandbox's server starts in the background: ask until it answers (bounded)."""
    for _ in range(300):
        answer = httpx.get(url, headers=headers)
        if answer.status_code == 200:
            return answer
        time.sleep(0.1)
    return answer


def test_any_port_is_proxied_with_the_access_token(
    e2b_env: ServerProcess, sandbox: Sandbox
) -> None:
    sandbox.files.write("/tmp/site/hello.txt", "from the sandbox")
    sandbox.commands.run("cd /tmp/site && python3 -m http.server 8000", background=True)
    url = f"{e2b_env.url}/e2b/hello.txt"
    answer = _get_until_served(url, _headers(sandbox, 8000))
    assert answer.status_code == 200
    assert answer.text == "from the sandbox"
    wrong = dict(_headers(sandbox, 8000), **{"X-Access-Token": "vre_nope"})
    assert httpx.get(url, headers=wrong).status_code == 401
    # the traffic token (what the code-interpreter SDK sends on some calls) opens ports...
    traffic = sandbox.traffic_access_token
    assert traffic
    by_traffic = {
        "E2b-Sandbox-Id": sandbox.sandbox_id,
        "E2b-Sandbox-Port": "8000",
        "E2B-Traffic-Access-Token": traffic,
    }
    assert httpx.get(url, headers=by_traffic).text == "from the sandbox"
    # ...but not envd
    envd = dict(by_traffic, **{"E2b-Sandbox-Port": "49983"})
    assert httpx.get(f"{e2b_env.url}/e2b/health", headers=envd).status_code == 401


def test_interpreter_port_calls_the_hook_first(e2b_env: ServerProcess, sandbox: Sandbox) -> None:
    """Port 49999 is the code interpreter's: the hook starts it before the request goes in."""
    answer = httpx.get(f"{e2b_env.url}/e2b/health", headers=_headers(sandbox, 49999), timeout=60)
    assert answer.status_code == 200 and answer.json() == "OK"
    assert answer.headers["x-voidrun-interpreter"] == interpreter.version()


def test_a_foreign_server_on_the_interpreter_port(e2b_env: ServerProcess, sandbox: Sandbox) -> None:
    """Another program on 49999 first: a clear 502 in E2B's shape, not its answers."""
    sandbox.files.write("/tmp/ci/health", "not the interpreter")
    sandbox.commands.run("cd /tmp/ci && python3 -m http.server 49999", background=True)
    probe = "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 49999))'"
    for _ in range(300):
        if sandbox.commands.run(f"{probe} && echo up || true").stdout.strip() == "up":
            break
    answer = httpx.get(f"{e2b_env.url}/e2b/health", headers=_headers(sandbox, 49999), timeout=60)
    assert answer.status_code == 502
    assert "Port 49999 in the sandbox is taken" in answer.json()["message"]


def test_unknown_rpc_and_bad_port_are_refused(e2b_env: ServerProcess, sandbox: Sandbox) -> None:
    headers = _headers(sandbox, 49983)
    answer = httpx.post(f"{e2b_env.url}/e2b/process.Process/Nope", json={}, headers=headers)
    assert answer.status_code == 404
    assert answer.json()["code"] == "unimplemented"
    bad = dict(headers, **{"E2b-Sandbox-Port": "99999"})
    assert httpx.get(f"{e2b_env.url}/e2b/health", headers=bad).status_code == 400
    answer = httpx.post(
        f"{e2b_env.url}/e2b/filesystem.Filesystem/Stat",
        content=b'{"path": 5}',
        headers=dict(headers, **{"Content-Type": "application/json"}),
    )
    assert answer.status_code == 400
    assert answer.json()["code"] == "invalid_argument"


def test_timeout_kills_or_pauses(e2b_env: ServerProcess) -> None:
    killed = Sandbox.create(timeout=1)
    paused = Sandbox.create(timeout=1, lifecycle={"on_timeout": "pause"})
    try:
        for _ in range(600):
            try:
                Sandbox.get_info(killed.sandbox_id)
            except SandboxNotFoundException:
                break
            time.sleep(0.1)
        with pytest.raises(SandboxNotFoundException):
            Sandbox.get_info(killed.sandbox_id)
        for _ in range(600):
            if Sandbox.get_info(paused.sandbox_id).state == SandboxState.PAUSED:
                break
            time.sleep(0.1)
        assert Sandbox.get_info(paused.sandbox_id).state == SandboxState.PAUSED
        assert Sandbox.connect(paused.sandbox_id).commands.run("echo back").stdout == "back\n"
    finally:
        paused.kill()


def test_async_sdk_commands_and_files(e2b_env: ServerProcess) -> None:
    async def scenario() -> tuple[str, str, int]:
        box = await AsyncSandbox.create()
        try:
            result = await box.commands.run("echo async; exit 0")
            await box.files.write("/tmp/async.txt", "written")
            text = await box.files.read("/tmp/async.txt")
            handle = await box.commands.run("sleep 600", background=True)
            killed = await box.commands.kill(handle.pid)
            return result.stdout, text, int(killed)
        finally:
            await box.kill()

    assert asyncio.run(scenario()) == ("async\n", "written", 1)


def test_files_route_refuses_bad_input(e2b_env: ServerProcess, sandbox: Sandbox) -> None:
    url = f"{e2b_env.url}/e2b/files"
    headers = _headers(sandbox, 49983)
    octet = dict(headers, **{"Content-Type": "application/octet-stream"})
    cases = [
        httpx.get(url, headers=headers),  # no path
        httpx.get(url, params={"path": "/tmp"}, headers=headers),  # a directory
        httpx.post(
            url,
            params={"path": "/tmp/x"},
            content=b"not gzip",
            headers=dict(octet, **{"Content-Encoding": "gzip"}),
        ),
        httpx.post(
            url,
            params={"path": "/tmp/x"},
            content=b"x",
            headers=dict(octet, **{"Content-Encoding": "br"}),
        ),
        httpx.post(url, content=b"x", headers=octet),  # no path
        httpx.post(
            url,
            content=b'--b\r\nContent-Disposition: form-data; name="file"',
            headers=dict(headers, **{"Content-Type": "multipart/form-data; boundary=b"}),
        ),
        httpx.post(
            url,
            content=b"--b--\r\n",
            headers=dict(headers, **{"Content-Type": "multipart/form-data; boundary=b"}),
        ),
        httpx.post(
            url, content=b"x", headers=dict(headers, **{"Content-Type": "multipart/form-data"})
        ),
    ]
    for answer in cases:
        assert answer.status_code == 400, (answer.request.url, answer.text)
        assert answer.json()["code"] == 400
    missing = httpx.get(url, params={"path": "/tmp/none"}, headers=headers)
    assert (missing.status_code, missing.json()["code"]) == (404, 404)
    assert not sandbox.files.exists("/tmp/x")  # nothing half-written
