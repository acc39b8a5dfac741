"""§C.6: every data-plane call refreshes the sandbox's activity, not just exec. With a short
idle threshold, sandboxes kept busy only through files, commands, PTY or session-exec routes
stay running while an untouched one is paused."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.support.sandboxes import create_sandbox, sandbox_server
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(600)]
IDLE_SECONDS = 2.0


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    fast = {
        "VOIDRUN_AUTO_SLEEP_CHECK_INTERVAL_SECONDS": "0.2",
        "VOIDRUN_PAUSE_AFTER_IDLE_SECONDS": str(IDLE_SECONDS),
        "VOIDRUN_STOP_AFTER_PAUSED_SECONDS": "3600",
    }
    with sandbox_server(**fast) as proc:
        yield proc


def ok(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text


def files(client: httpx.Client, sid: str) -> None:
    response = client.get(f"/sandboxes/{sid}/files", params={"path": "/root"})
    ok(response)
    assert response.json()["data"]["success"] is True


def commands(client: httpx.Client, sid: str) -> None:
    response = client.get(f"/sandboxes/{sid}/commands/list")
    ok(response)
    assert response.json() == {"success": True, "processes": []}


def pty(client: httpx.Client, sid: str) -> None:
    response = client.get(f"/sandboxes/{sid}/pty/sessions")
    ok(response)
    assert response.json() == {
        "status": "success",
        "message": "Sessions retrieved",
        "data": {"sessions": []},
    }


def session_exec(client: httpx.Client, sid: str) -> None:
    url = f"/sandboxes/{sid}/session-exec"
    session = client.post(url, json={"action": "create"}).json()["sessionId"]
    response = client.post(url, json={"action": "exec", "sessionId": session, "command": "true"})
    assert response.json() == {"success": True, "sessionId": session, "output": "", "exitCode": 0}
    assert client.post(url, json={"action": "close", "sessionId": session}).json() == {
        "success": True
    }


def upload(client: httpx.Client, sid: str) -> None:
    response = client.post(
        f"/sandboxes/{sid}/files/upload", params={"path": "/tmp/a"}, content=b"a"
    )
    ok(response)
    assert response.json()["data"] == {"path": "/tmp/a", "size": 1}


FAMILIES: dict[str, Callable[[httpx.Client, str], None]] = {
    "files": files,
    "upload": upload,
    "commands": commands,
    "pty": pty,
    "session-exec": session_exec,
}


def status(client: httpx.Client, sid: str) -> str:
    return str(client.get(f"/sandboxes/{sid}").json()["data"]["status"])


def test_non_exec_routes_keep_a_sandbox_awake(server: ServerProcess) -> None:
    with server.client() as client:
        # autoSleep off while they are created one by one, so none starts the race idle
        idle = str(create_sandbox(client, name="idle", autoSleep=False)["id"])
        busy = {
            family: str(create_sandbox(client, name=f"busy-{family}", autoSleep=False)["id"])
            for family in FAMILIES
        }
        for family, sid in busy.items():
            FAMILIES[family](client, sid)
        for sid in (idle, *busy.values()):
            patched = client.patch(f"/sandboxes/{sid}", json={"autoSleep": True})
            assert patched.json()["data"]["autoSleep"] is True
        began = time.monotonic()
        # Three idle periods, and until the untouched sandbox has been paused.
        while time.monotonic() - began < 3 * IDLE_SECONDS or status(client, idle) != "paused":
            assert time.monotonic() - began < 60, "the idle sandbox was never paused"
            for family, sid in busy.items():
                FAMILIES[family](client, sid)
                assert status(client, sid) == "running", f"{family} did not count as activity"
            time.sleep(0.2)
        assert {f: status(client, sid) for f, sid in busy.items()} == dict.fromkeys(
            FAMILIES, "running"
        )
        assert status(client, idle) == "paused"
        # left alone, the busy ones are paused too
        for sid in busy.values():
            client.patch(f"/sandboxes/{sid}", json={"autoSleep": True})
        deadline = time.monotonic() + 60
        while any(status(client, sid) != "paused" for sid in busy.values()):
            assert time.monotonic() < deadline, "busy sandboxes never went to sleep when idle"
            time.sleep(0.2)
