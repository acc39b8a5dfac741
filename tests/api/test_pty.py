"""Shell sessions (session-exec) and PTYs over HTTP and WebSockets, against real sandboxes."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.api.test_accounts import second_org
from tests.support.http import assert_error
from tests.support.sandboxes import (
    create_sandbox,
    sandbox_workdir,  # noqa: F401 - the "workdir" fixture
    shared_sandbox_server,  # noqa: F401 - the "server" fixture
)
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(900)]
PROMPT = re.compile(r"# $")


@pytest.fixture(scope="module")
def sandbox(server: ServerProcess) -> str:
    with server.client() as client:
        return str(create_sandbox(client, name="pty-box")["id"])


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def session(client: httpx.Client, sandbox: str, **body: object) -> dict[str, object]:
    response = client.post(f"/sandboxes/{sandbox}/session-exec", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()
    assert result["success"] is True
    return result


def ws_url(server: ServerProcess, path: str, key: str | None = None) -> str:
    return f"ws://127.0.0.1:{server.port}/api{path}?apiKey={key or server.api_key}"


def read_until(ws: ClientConnection, pattern: str | re.Pattern[str], seen: list[str]) -> str:
    """Receive frames until ``pattern`` matches the text so far (a bounded wait, no timing)."""
    for _ in range(2000):
        text = "".join(seen)
        if re.search(pattern, text):
            return text
        frame = ws.recv(timeout=30)
        seen.append(frame if isinstance(frame, str) else frame.decode())
    raise AssertionError(f"never saw {pattern!r} in {''.join(seen)!r}")


# -- shell sessions -------------------------------------------------------------------------


def test_session_state_persists_across_calls(client: httpx.Client, sandbox: str) -> None:
    created = session(client, sandbox, action="create")
    sid = created["sessionId"]
    assert isinstance(sid, str) and re.fullmatch(r"sess-[0-9a-f]{16}", sid)
    first = session(client, sandbox, action="exec", sessionId=sid, command="cd /tmp; export A=1")
    assert first == {"success": True, "sessionId": sid, "output": "", "exitCode": 0}
    session(client, sandbox, action="exec", sessionId=sid, command="hi() { echo hi $A $PWD; }")
    third = session(client, sandbox, action="exec", sessionId=sid, command="hi; exit_=4; false")
    assert third["output"] == "hi 1 /tmp\n" and third["exitCode"] == 1
    assert session(client, sandbox, action="close", sessionId=sid) == {"success": True}


def test_read_is_answered_by_input(server: ServerProcess, sandbox: str, workdir: str) -> None:
    with server.client() as client:
        sid = session(client, sandbox, action="create", sessionId="asker")["sessionId"]
        assert sid == "asker"

        def ask() -> dict[str, object]:
            with server.client() as own:
                command = f"touch {workdir}/asking; read -r x; echo got $x"
                return session(own, sandbox, action="exec", sessionId=sid, command=command)

        with ThreadPoolExecutor(1) as pool:
            asked = pool.submit(ask)
            deadline = time.monotonic() + 60
            while (
                "asking"
                not in client.post(f"/sandboxes/{sandbox}/exec", json={"command": f"ls {workdir}"})
                .json()["data"]["stdout"]
                .split()
            ):
                assert time.monotonic() < deadline, "the session never ran the command"
                assert not asked.done(), asked.result()  # it ended without asking
                time.sleep(0.02)
            answered = session(client, sandbox, action="input", sessionId=sid, input="yes\n")
            assert answered == {"success": True, "sessionId": sid, "output": ""}
            assert asked.result(timeout=60)["output"] == "got yes\n"
        resized = session(client, sandbox, action="resize", sessionId=sid, cols=132, rows=43)
        assert resized == {"success": True}
        size = session(client, sandbox, action="exec", sessionId=sid, command="stty size")
        assert size["output"] == "43 132\n"


def test_session_exec_stream_is_ndjson(client: httpx.Client, sandbox: str) -> None:
    sid = session(client, sandbox, action="create")["sessionId"]
    body = {"sessionId": sid, "command": "for i in 1 2 3; do echo n$i; done; (exit 6)"}
    with client.stream("POST", f"/sandboxes/{sandbox}/session-exec-stream", json=body) as s:
        assert s.status_code == 200
        assert s.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in s.iter_lines() if line]
    assert lines[-1] == {"type": "exit", "exitCode": 6}
    assert all(line["type"] == "stdout" for line in lines[:-1])
    assert "".join(str(line["data"]) for line in lines[:-1]) == "n1\nn2\nn3\n"
    missing = {"sessionId": "sess-0000000000000000", "command": "true"}
    unknown = client.post(f"/sandboxes/{sandbox}/session-exec-stream", json=missing)
    assert "not found" in assert_error(unknown, 400)["error"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"action": "explode"},
        {"action": "exec", "command": "true"},
        {"action": "exec", "sessionId": "sess-0000000000000000", "command": "true"},
        {"action": "exec", "sessionId": "x" * 101, "command": "true"},
        {"action": "exec", "sessionId": "s1"},
        {"action": "input", "sessionId": "sess-0000000000000000", "input": "y\n"},
        {"action": "resize", "sessionId": "s1", "cols": 80},
        {"action": "resize", "sessionId": "s1", "cols": 0, "rows": 10},
        {"action": "resize", "sessionId": "s1", "cols": 80, "rows": "10"},
        {"action": "close", "sessionId": "sess-0000000000000000"},
        {"action": "create", "sessionId": "s1", "shell": "/no/such/shell"},
        {"action": 5},
    ],
)
def test_session_errors_are_400(client: httpx.Client, sandbox: str, body: object) -> None:
    assert_error(client.post(f"/sandboxes/{sandbox}/session-exec", json=body), 400)


def test_unknown_session_names_the_agent_error(client: httpx.Client, sandbox: str) -> None:
    body = {"action": "exec", "sessionId": "nope", "command": "true"}
    error = assert_error(client.post(f"/sandboxes/{sandbox}/session-exec", json=body), 400)
    assert error == {"error": "session 'nope' not found"}


# -- PTYs -----------------------------------------------------------------------------------


def test_ephemeral_pty_prompt_and_echo(server: ServerProcess, sandbox: str) -> None:
    seen: list[str] = []
    with connect(ws_url(server, f"/sandboxes/{sandbox}/pty")) as ws:
        read_until(ws, PROMPT, seen)
        assert re.search(r"root@[\w.-]+:~# $", "".join(seen))
        ws.send("echo $((6 * 7))\n")
        read_until(ws, r"[^*]42\r?\n[\s\S]*# $", seen)


def test_websocket_rejections_happen_before_the_upgrade(
    server: ServerProcess, sandbox: str
) -> None:
    cases = [
        (f"ws://127.0.0.1:{server.port}/api/sandboxes/{sandbox}/pty", 401),
        (ws_url(server, f"/sandboxes/{sandbox}/pty", key="vr_" + "x" * 43), 401),
        (ws_url(server, f"/sandboxes/{'0' * 24}/pty"), 404),
        (ws_url(server, f"/sandboxes/{sandbox}/pty/sessions/pty-0000000000000000"), 404),
    ]
    for url, status in cases:
        with pytest.raises(InvalidStatus) as rejected:
            connect(url).close()
        assert rejected.value.response.status_code == status
        assert json.loads(rejected.value.response.body or b"{}")["error"]


def test_persistent_pty_session(server: ServerProcess, client: httpx.Client, sandbox: str) -> None:
    base = f"/sandboxes/{sandbox}/pty/sessions"
    created = client.post(base, json={"cols": 100, "rows": 30}).json()
    assert (created["status"], created["message"]) == ("success", "Session created")
    sid = created["data"]["sessionId"]
    datetime.fromisoformat(created["data"]["createdAt"])
    url = ws_url(server, f"{base}/{sid}")

    one: list[str] = []
    two: list[str] = []
    with connect(url) as first, connect(url) as second:
        listing = client.get(base).json()
        assert listing["message"] == "Sessions retrieved"
        [info] = [s for s in listing["data"]["sessions"] if s["id"] == sid]
        assert info["clients"] == 2 and info["alive"] is True
        datetime.fromisoformat(info["createdAt"])
        sent = client.post(f"{base}/{sid}/execute", json={"command": "stty size; echo $((6*7))"})
        assert sent.json() == {"status": "success", "message": "Command sent"}
        read_until(first, r"30 100\r?\n42", one)
        read_until(second, r"30 100\r?\n42", two)
        first.send("echo typed-$((1+1))\n")  # keystrokes from one client, seen by both
        read_until(second, r"typed-2", two)

    resized = client.post(f"{base}/{sid}/resize", json={"cols": 120, "rows": 40})
    assert resized.json() == {"status": "success", "message": "Terminal resized"}
    client.post(f"{base}/{sid}/execute", json={"command": "stty size"})
    again: list[str] = []
    with connect(url) as third:  # a later client gets the scrollback first
        read_until(third, r"42[\s\S]*typed-2[\s\S]*40 120", again)
    buffer = client.get(f"{base}/{sid}/buffer").json()
    assert buffer["message"] == "Buffer retrieved"
    assert "42" in buffer["data"]["output"] and "40 120" in buffer["data"]["output"]

    deleted = client.delete(f"{base}/{sid}")
    assert deleted.json() == {"status": "success", "message": "Session deleted"}
    assert_error(client.delete(f"{base}/{sid}"), 404)
    assert_error(client.get(f"{base}/{sid}/buffer"), 404)
    assert_error(client.post(f"{base}/{sid}/execute", json={"command": "ls"}), 404)
    assert sid not in {s["id"] for s in client.get(base).json()["data"]["sessions"]}
    with pytest.raises(InvalidStatus) as gone:
        connect(url).close()
    assert gone.value.response.status_code == 404


def test_pty_bad_input(client: httpx.Client, sandbox: str) -> None:
    base = f"/sandboxes/{sandbox}/pty/sessions"
    for body in ({"cols": 0}, {"rows": 201}, {"cols": "80"}, {"cols": 501, "rows": 24}):
        assert_error(client.post(base, json=body), 400)
    sid = client.post(base).json()["data"]["sessionId"]  # no body: 80x24
    for body in ({"cols": 80}, {"cols": 0, "rows": 10}, {"cols": 80, "rows": 1.5}):
        assert_error(client.post(f"{base}/{sid}/resize", json=body), 400)
    for body in ({}, {"command": ""}, {"command": 7}):
        assert_error(client.post(f"{base}/{sid}/execute", json=body), 400)
    assert client.delete(f"{base}/{sid}").status_code == 200


def test_other_org_sees_no_sessions(
    server: ServerProcess, client: httpx.Client, sandbox: str
) -> None:
    base = f"/sandboxes/{sandbox}/pty/sessions"
    sid = client.post(base).json()["data"]["sessionId"]
    other = second_org(server, "pty-other")
    with server.client(other) as intruder:
        assert_error(intruder.get(base), 404)
        assert_error(intruder.post(f"{base}/{sid}/execute", json={"command": "id"}), 404)
        assert_error(intruder.delete(f"{base}/{sid}"), 404)
        body = {"action": "create"}
        assert_error(intruder.post(f"/sandboxes/{sandbox}/session-exec", json=body), 404)
    with pytest.raises(InvalidStatus) as rejected:
        connect(ws_url(server, f"{base}/{sid}", key=other)).close()
    assert rejected.value.response.status_code == 404
    assert client.delete(f"{base}/{sid}").status_code == 200
