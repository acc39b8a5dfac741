"""Streaming contract (§B.1–B.3): SSE and NDJSON response headers, the exec-stream timeout
``exit`` event, and the attach stream's ``error`` event (follow limit, sandbox stopped)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.support.sandboxes import (
    create_sandbox,
    sandbox_server,
    shared_sandbox_server,  # noqa: F401 - the "server" fixture
)
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(900)]
SSE_HEADERS = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "connection": "keep-alive",
    "x-accel-buffering": "no",
}


@pytest.fixture(scope="module")
def sandbox(server: ServerProcess) -> str:
    with server.client() as client:
        return str(create_sandbox(client, name="stream-box", autoSleep=False)["id"])


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def sse(response: httpx.Response) -> list[tuple[str, str]]:
    """Parse SSE like the official SDK: event/data fields, dispatch on a blank line; the
    stream must end with a complete event (a trailing blank line)."""
    events, name, data = [], "", []
    lines = list(response.iter_lines())
    assert lines[-1] == "", lines
    for line in lines:
        if not line:
            if data:
                events.append((name, "\n".join(data)))
            name, data = "", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
    return events


def sse_headers(response: httpx.Response) -> dict[str, str]:
    return {k: response.headers.get(k, "") for k in SSE_HEADERS}


def start(client: httpx.Client, sandbox: str, command: str) -> int:
    response = client.post(f"/sandboxes/{sandbox}/commands/run", json={"command": command})
    assert response.status_code == 200, response.text
    return int(response.json()["pid"])


def test_exec_stream_headers_and_timeout_exit(client: httpx.Client, sandbox: str) -> None:
    body = {"command": "echo started; sleep 60; echo never", "timeout": 1, "env": None}
    with client.stream("POST", f"/sandboxes/{sandbox}/exec-stream", json=body) as response:
        assert response.status_code == 200
        assert sse_headers(response) == SSE_HEADERS
        events = sse(response)
    # §B.1 [R]: on timeout, an exit with a non-zero code (124) and an error string, then close.
    assert events == [
        ("stdout", "started"),
        ("stderr", "voidrun: command timed out after 1s; its process group was killed"),
        ("exit", '{"exitCode":124,"error":"command timed out after 1s"}'),
    ]
    assert json.loads(events[-1][1]) == {"exitCode": 124, "error": "command timed out after 1s"}
    done = client.post(f"/sandboxes/{sandbox}/exec", json={"command": "pgrep -x sleep || true"})
    assert done.json()["data"]["stdout"] == ""


def test_exec_stream_without_timeout_ends_with_a_plain_exit(
    client: httpx.Client, sandbox: str
) -> None:
    body = {"command": "echo a; echo b >&2; exit 7"}
    with client.stream("POST", f"/sandboxes/{sandbox}/exec-stream", json=body) as response:
        assert sse_headers(response) == SSE_HEADERS
        assert sse(response) == [("stdout", "a"), ("stderr", "b"), ("exit", '{"exitCode":7}')]


def test_attach_headers_and_exit(client: httpx.Client, sandbox: str) -> None:
    pid = start(client, sandbox, "echo one; exit 3")
    with client.stream(
        "POST", f"/sandboxes/{sandbox}/commands/attach", json={"pid": pid}
    ) as response:
        assert response.status_code == 200
        assert sse_headers(response) == SSE_HEADERS
        assert sse(response) == [("stdout", "one"), ("exit", '{"exitCode":3}')]


def test_attach_sends_error_when_the_sandbox_stops(client: httpx.Client, sandbox: str) -> None:
    """§B.2: a stream-level failure is an ``error`` event ``{"error": "…"}``, not an exit."""
    pid = start(client, sandbox, "echo up; exec sleep 300")
    with client.stream(
        "POST", f"/sandboxes/{sandbox}/commands/attach", json={"pid": pid}
    ) as response:
        lines = response.iter_lines()
        assert [next(lines), next(lines), next(lines)] == ["event: stdout", "data: up", ""]
        assert client.post(f"/sandboxes/{sandbox}/stop").status_code == 200
        rest = list(lines)
    assert rest[:2] == ["event: error", rest[1]] and rest[2:] == [""]
    payload = json.loads(rest[1].removeprefix("data: "))
    assert list(payload) == ["error"] and isinstance(payload["error"], str) and payload["error"]
    assert client.get(f"/sandboxes/{sandbox}").json()["data"]["status"] == "stopped"
    assert client.post(f"/sandboxes/{sandbox}/start").status_code == 200


def test_session_exec_stream_headers(client: httpx.Client, sandbox: str) -> None:
    created = client.post(f"/sandboxes/{sandbox}/session-exec", json={"action": "create"})
    session = created.json()["sessionId"]
    body = {"sessionId": session, "command": "echo hi; false"}
    with client.stream("POST", f"/sandboxes/{sandbox}/session-exec-stream", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-content-type-options"] == "nosniff"
        lines = [json.loads(line) for line in response.iter_lines() if line]
    # Output comes as the terminal gives it: "hi\n" may arrive as "hi" and "\n".
    assert {line["type"] for line in lines[:-1]} == {"stdout"}
    assert "".join(line["data"] for line in lines[:-1]) == "hi\n"
    assert lines[-1] == {"type": "exit", "exitCode": 1}


def test_follow_limit_ends_attach_with_an_error_event() -> None:
    """With ``VOIDRUN_COMMAND_FOLLOW_LIMIT_SECONDS=1`` an attach to a command that runs on
    ends with the documented ``error`` event (attach again to go on); wait answers 504."""
    with (
        sandbox_server(VOIDRUN_COMMAND_FOLLOW_LIMIT_SECONDS="1") as proc,
        proc.client() as client,
    ):
        sid = str(create_sandbox(client, name="follow", autoSleep=False)["id"])
        pid = start(client, sid, "echo begun; exec sleep 300")
        limit = '{"error":"Stream time limit reached (after 1s); attach again"}'
        for _ in range(2):  # the command is still there to attach to again
            with client.stream(
                "POST", f"/sandboxes/{sid}/commands/attach", json={"pid": pid}
            ) as response:
                assert sse_headers(response) == SSE_HEADERS
                assert sse(response) == [("stdout", "begun"), ("error", limit)]
        waited = client.post(f"/sandboxes/{sid}/commands/wait", json={"pid": pid})
        assert waited.status_code == 504
        assert waited.json() == {"error": "Command still running", "details": "after 1s"}
        killed = client.post(f"/sandboxes/{sid}/commands/kill", json={"pid": pid})
        assert killed.json() == {"success": True, "message": "Process killed"}
