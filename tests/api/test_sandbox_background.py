"""What the server does on its own: async create, auto-sleep, noticing dead sandboxes."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.support.http import assert_error
from tests.support.sandboxes import create_sandbox, sandbox_server
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    fast = {
        "VOIDRUN_AUTO_SLEEP_CHECK_INTERVAL_SECONDS": "0.3",
        "VOIDRUN_PAUSE_AFTER_IDLE_SECONDS": "1",
        "VOIDRUN_STOP_AFTER_PAUSED_SECONDS": "1",
        "VOIDRUN_DELETE_AFTER_STOPPED_SECONDS": "3600",
    }
    with sandbox_server(**fast) as proc:
        yield proc


def wait_for(check: Callable[[], bool], what: str, attempts: int = 400) -> None:
    for _ in range(attempts):
        if check():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def status(client: httpx.Client, sandbox_id: object) -> str:
    return str(client.get(f"/sandboxes/{sandbox_id}").json()["data"]["status"])


def test_async_create_then_exec(server: ServerProcess) -> None:
    with server.client() as client:
        box = create_sandbox(client, name="async-box", sync=False, autoSleep=False)
        assert box["status"] == "running"
        result = client.post(f"/sandboxes/{box['id']}/exec", json={"command": "echo up"})
        assert result.json()["data"]["stdout"] == "up\n"


def test_idle_sandbox_is_paused_then_stopped_and_woken_by_exec(server: ServerProcess) -> None:
    with server.client() as client:
        box = create_sandbox(client, name="idle-box")
        client.post(f"/sandboxes/{box['id']}/exec", json={"command": "echo kept > /root/f"})
        wait_for(lambda: status(client, box["id"]) == "paused", "auto-pause")
        wait_for(lambda: status(client, box["id"]) == "stopped", "auto-stop")
        result = client.post(f"/sandboxes/{box['id']}/exec", json={"command": "cat /root/f"})
        assert result.json()["data"]["stdout"] == "kept\n"
        assert status(client, box["id"]) == "running"
        pinned = create_sandbox(client, name="pinned", autoSleep=False)
        # a sandbox created after it is paused: scans ran with "pinned" idle long enough too
        witness = create_sandbox(client, name="witness")
        wait_for(lambda: status(client, witness["id"]) in ("paused", "stopped"), "witness pause")
        assert status(client, pinned["id"]) == "running"


def test_sandbox_whose_agent_died_is_marked_killed_and_can_be_deleted(
    server: ServerProcess,
) -> None:
    with server.client() as client:
        box = create_sandbox(client, name="doomed", autoSleep=False)
        record = server.data_dir / "sandboxes" / str(box["id"]) / "state.json"
        pid = json.loads(record.read_text())["init"]["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: status(client, box["id"]) in ("killed", "error"), "the health check")
        gone = client.post(f"/sandboxes/{box['id']}/exec", json={"command": "true"})
        now = status(client, box["id"])
        assert assert_error(gone, 404) == {
            "error": "Sandbox not running",
            "details": f"current status: {now}",
        }
        assert client.post(f"/sandboxes/{box['id']}/start").status_code == 200
        again = client.post(f"/sandboxes/{box['id']}/exec", json={"command": "echo back"})
        assert again.json()["data"]["stdout"] == "back\n"
        assert client.delete(f"/sandboxes/{box['id']}").status_code == 200
