"""§C.5 / §D.3 #14: every data-plane family wakes a paused or stopped sandbox, answers as a
running sandbox would, and leaves it ``running`` (exec is covered in test_exec.py)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from tests.support.sandboxes import (
    create_sandbox,
    shared_sandbox_server,  # noqa: F401 - the "server" fixture
)
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(900)]
DIR = "/root/wake"
KEPT = f"{DIR}/kept.txt"


@pytest.fixture(scope="module")
def sandbox(server: ServerProcess) -> str:
    with server.client() as client:
        sid = str(create_sandbox(client, name="wake-box", autoSleep=False)["id"])
        response = client.post(
            f"/sandboxes/{sid}/files/upload", params={"path": KEPT}, content=b"kept\n"
        )
        assert response.status_code == 200, response.text
        return sid


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def ws_url(server: ServerProcess, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}/api{path}?apiKey={server.api_key}"


def read_until(ws: ClientConnection, pattern: str) -> str:
    seen = ""
    for _ in range(2000):
        if re.search(pattern, seen):
            return seen
        frame = ws.recv(timeout=30)
        seen += frame if isinstance(frame, str) else frame.decode()
    raise AssertionError(f"never saw {pattern!r} in {seen!r}")


def exec_envelope(response: httpx.Response) -> dict[str, object]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"status", "message", "data"}
    assert (body["status"], body["message"]) == ("success", "ok")
    data: dict[str, object] = body["data"]
    assert set(data) == {"stdout", "stderr", "exitCode"}
    return data


# -- one call per family; each asserts the exact answer a running sandbox gives --------------


def files_list(server: ServerProcess, client: httpx.Client, sid: str) -> None:
    body = client.get(f"/sandboxes/{sid}/files", params={"path": DIR}).json()
    assert body["status"] == "success" and body["message"] == "ok"
    assert body["data"]["success"] is True
    entry = next(f for f in body["data"]["files"] if f["name"] == "kept.txt")
    mod_time = entry.pop("modTime")
    datetime.fromisoformat(mod_time)
    assert entry == {
        "name": "kept.txt",
        "path": KEPT,
        "size": 5,
        "mode": "-rw-r--r--",
        "isDir": False,
    }


def files_stat(server: ServerProcess, client: httpx.Client, sid: str) -> None:
    data = exec_envelope(client.get(f"/sandboxes/{sid}/files/stat", params={"path": KEPT}))
    assert (data["exitCode"], data["stderr"]) == (0, "")
    info = json.loads(str(data["stdout"]))
    assert set(info) == {"path", "size", "mode", "mtime", "type"}
    assert (info["path"], info["size"], info["type"]) == (KEPT, 5, "regular file")


def files_upload(server: ServerProcess, client: httpx.Client, sid: str) -> None:
    path = f"{DIR}/up-{uuid.uuid4().hex[:8]}.txt"
    response = client.post(f"/sandboxes/{sid}/files/upload", params={"path": path}, content=b"up")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "success",
        "message": "File uploaded",
        "data": {"path": path, "size": 2},
    }
    assert client.get(f"/sandboxes/{sid}/files/download", params={"path": path}).content == b"up"


def files_download(server: ServerProcess, client: httpx.Client, sid: str) -> None:
    response = client.get(f"/sandboxes/{sid}/files/download", params={"path": KEPT})
    assert response.status_code == 200 and response.content == b"kept\n"
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"] == 'attachment; filename="kept.txt"'
    assert response.headers["content-length"] == "5"


def commands_run(server: ServerProcess, client: httpx.Client, sid: str) -> None:
    command = f"cat {KEPT}"
    started = client.post(f"/sandboxes/{sid}/commands/run", json={"command": command}).json()
    assert set(started) == {"success", "pid", "command"}
    assert (started["success"], started["command"]) == (True, command)
    assert type(started["pid"]) is int
    waited = client.post(f"/sandboxes/{sid}/commands/wait", json={"pid": started["pid"]})
    assert waited.json() == {"success": True, "exitCode": 0}


def commands_list(server: ServerProcess, client: httpx.Client, sid: str) -> None:
    body = client.get(f"/sandboxes/{sid}/commands/list").json()
    assert set(body) == {"success", "processes"} and body["success"] is True
    for process in body["processes"]:
        assert set(process) == {"pid", "command", "startTime", "running", "exitCode"}
        assert process["running"] is False  # nothing is left running between tests
        datetime.fromisoformat(process["startTime"])


def pty_create(server: ServerProcess, client: httpx.Client, sid: str) -> None:
    body = client.post(f"/sandboxes/{sid}/pty/sessions", json={"cols": 80, "rows": 24}).json()
    assert set(body) == {"status", "message", "data"}
    assert (body["status"], body["message"]) == ("success", "Session created")
    assert set(body["data"]) == {"sessionId", "createdAt"}
    datetime.fromisoformat(body["data"]["createdAt"])
    session = body["data"]["sessionId"]
    listed = client.get(f"/sandboxes/{sid}/pty/sessions").json()["data"]["sessions"]
    assert [s["alive"] for s in listed if s["id"] == session] == [True]
    deleted = client.delete(f"/sandboxes/{sid}/pty/sessions/{session}").json()
    assert deleted == {"status": "success", "message": "Session deleted"}


def pty_websocket(server: ServerProcess, client: httpx.Client, sid: str) -> None:
    with connect(ws_url(server, f"/sandboxes/{sid}/pty")) as ws:
        read_until(ws, r"# $")
        ws.send(f"cat {KEPT}\n")
        read_until(ws, r"kept\r?\n[\s\S]*# $")


def pty_session_websocket(server: ServerProcess, client: httpx.Client, sid: str) -> None:
    """A persistent session survives a pause (not a stop: the agent restarts), so this one is
    created on the awake sandbox by ``prepare`` and attached to while it sleeps."""
    session = client.get(f"/sandboxes/{sid}/pty/sessions").json()["data"]["sessions"][-1]["id"]
    with connect(ws_url(server, f"/sandboxes/{sid}/pty/sessions/{session}")) as ws:
        ws.send(f"cat {KEPT}\n")
        read_until(ws, r"kept\r?\n")
    client.delete(f"/sandboxes/{sid}/pty/sessions/{session}")


def session_exec(server: ServerProcess, client: httpx.Client, sid: str) -> None:
    url = f"/sandboxes/{sid}/session-exec"
    created = client.post(url, json={"action": "create"}).json()
    assert set(created) == {"success", "sessionId"} and created["success"] is True
    session = created["sessionId"]
    assert re.fullmatch(r"sess-[0-9a-f]{16}", session)
    ran = client.post(url, json={"action": "exec", "sessionId": session, "command": f"cat {KEPT}"})
    assert ran.json() == {"success": True, "sessionId": session, "output": "kept\n", "exitCode": 0}
    assert client.post(url, json={"action": "close", "sessionId": session}).json() == {
        "success": True
    }


def file_watch(server: ServerProcess, client: httpx.Client, sid: str) -> None:
    response = client.post(f"/sandboxes/{sid}/files/watch", json={"path": DIR})
    body = response.json()
    assert (body["status"], body["message"]) == ("success", "watch started")
    assert set(body["data"]) == {"sessionId"}
    assert uuid.UUID(body["data"]["sessionId"]).version == 4
    watch_events(server, client, sid, body["data"]["sessionId"])


def watch_events(server: ServerProcess, client: httpx.Client, sid: str, session: str) -> None:
    path = f"{DIR}/w-{uuid.uuid4().hex[:8]}"
    with connect(ws_url(server, f"/sandboxes/{sid}/files/watch/{session}/stream")) as ws:
        client.post(f"/sandboxes/{sid}/files/mkdir", params={"path": path})
        for _ in range(100):
            event = json.loads(ws.recv(timeout=30))
            if event["path"] == path:
                break
        datetime.fromisoformat(event.pop("timestamp"))
        assert event == {"type": "created", "path": path}


def file_watch_websocket(server: ServerProcess, client: httpx.Client, sid: str) -> None:
    """The session id comes from ``prepare`` (started while awake); connecting wakes."""
    watch_events(server, client, sid, PREPARED["watch"])


PREPARED: dict[str, str] = {}


def prepare_watch(client: httpx.Client, sid: str) -> None:
    response = client.post(f"/sandboxes/{sid}/files/watch", json={"path": DIR})
    PREPARED["watch"] = response.json()["data"]["sessionId"]


def prepare_pty_session(client: httpx.Client, sid: str) -> None:
    assert client.post(f"/sandboxes/{sid}/pty/sessions", json={}).status_code == 200


Call = Callable[[ServerProcess, httpx.Client, str], None]
FAMILIES: dict[str, tuple[Call, Callable[[httpx.Client, str], None] | None]] = {
    "files-list": (files_list, None),
    "files-stat": (files_stat, None),
    "files-upload": (files_upload, None),
    "files-download": (files_download, None),
    "commands-run": (commands_run, None),
    "commands-list": (commands_list, None),
    "pty-create-session": (pty_create, None),
    "pty-websocket": (pty_websocket, None),
    "session-exec": (session_exec, None),
    "file-watch": (file_watch, None),
    "file-watch-websocket": (file_watch_websocket, prepare_watch),
}


def status(client: httpx.Client, sid: str) -> str:
    return str(client.get(f"/sandboxes/{sid}").json()["data"]["status"])


@pytest.mark.parametrize(("state", "verb"), [("paused", "pause"), ("stopped", "stop")])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_data_plane_wakes(
    server: ServerProcess, client: httpx.Client, sandbox: str, family: str, state: str, verb: str
) -> None:
    call, prepare = FAMILIES[family]
    assert status(client, sandbox) == "running"
    if prepare is not None:
        prepare(client, sandbox)
    assert client.post(f"/sandboxes/{sandbox}/{verb}").status_code == 200
    assert status(client, sandbox) == state
    call(server, client, sandbox)
    assert status(client, sandbox) == "running"
    if prepare is not None:
        prepare(client, sandbox)
    call(server, client, sandbox)  # and it keeps answering once awake


def test_pty_session_websocket_wakes_a_paused_sandbox(
    server: ServerProcess, client: httpx.Client, sandbox: str
) -> None:
    prepare_pty_session(client, sandbox)
    assert client.post(f"/sandboxes/{sandbox}/pause").status_code == 200
    pty_session_websocket(server, client, sandbox)
    assert status(client, sandbox) == "running"
