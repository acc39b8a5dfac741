"""Revoking a key ends the streams opened with it: WebSockets, SSE streams and long polls.

Authentication happens when a stream opens; these tests show that a key revoked afterwards
(through the API of the same server, or through the CLI, another process writing the same
database) also ends what is already open. The design target is about one second; the bound
here is a generous 5 s so that a loaded machine does not make the test flaky.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from threading import Event

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.support.sandboxes import (
    create_sandbox,
    shared_sandbox_server,  # noqa: F401 - the "server" fixture
)
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(300)]
BOUND = 5.0
POLICY_VIOLATION = 1008


@pytest.fixture(scope="module")
def box(server: ServerProcess) -> str:
    with server.client() as client:
        return str(create_sandbox(client, name="revocation-box")["id"])


def ws(server: ServerProcess, path: str, key: str) -> ClientConnection:
    return connect(f"ws://127.0.0.1:{server.port}/api{path}?apiKey={key}", open_timeout=30)


def closed_code(conn: ClientConnection) -> int | None:
    """Read until the server closes; the close code it sent."""
    try:
        while True:
            conn.recv(timeout=60)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None


def pty(server: ServerProcess, box: str, key: str, ready: Event) -> object:
    with ws(server, f"/sandboxes/{box}/pty", key) as conn:
        seen = ""
        while not re.search(r"# $", seen):
            frame = conn.recv(timeout=30)
            seen += frame if isinstance(frame, str) else frame.decode()
        ready.set()
        return closed_code(conn)


def watch(server: ServerProcess, box: str, key: str, ready: Event) -> object:
    with httpx.Client(base_url=server.api, headers={"X-API-Key": key}, timeout=30) as client:
        response = client.post(f"/sandboxes/{box}/files/watch", json={"path": "/tmp"})
        session_id = response.json()["data"]["sessionId"]
    with ws(server, f"/sandboxes/{box}/files/watch/{session_id}/stream", key) as conn:
        ready.set()
        return closed_code(conn)


def sse_events(response: httpx.Response, ready: Event) -> list[tuple[str, str]]:
    events, name = [], ""
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            events.append((name, line[5:].strip()))
            ready.set()  # the stream is open and flowing
    return events


def exec_stream(server: ServerProcess, box: str, key: str, ready: Event) -> object:
    with httpx.Client(base_url=server.api, headers={"X-API-Key": key}, timeout=60) as client:
        body = {"command": "echo started; sleep 30"}
        with client.stream("POST", f"/sandboxes/{box}/exec-stream", json=body) as response:
            assert response.status_code == 200
            return sse_events(response, ready)[-1]


def attach(server: ServerProcess, box: str, key: str, ready: Event) -> object:
    with httpx.Client(base_url=server.api, headers={"X-API-Key": key}, timeout=60) as client:
        started = client.post(
            f"/sandboxes/{box}/commands/run", json={"command": "echo hi; sleep 30"}
        )
        pid = started.json()["pid"]
        with client.stream("POST", f"/sandboxes/{box}/commands/attach", json={"pid": pid}) as r:
            assert r.status_code == 200
            return sse_events(r, ready)[-1]


def wait_poll(server: ServerProcess, box: str, key: str, ready: Event) -> object:
    with httpx.Client(base_url=server.api, headers={"X-API-Key": key}, timeout=60) as client:
        started = client.post(f"/sandboxes/{box}/commands/run", json={"command": "sleep 30"})
        pid = started.json()["pid"]
        ready.set()  # revoked before or after the poll starts: it must answer 401 either way
        return client.post(f"/sandboxes/{box}/commands/wait", json={"pid": pid}).status_code


STREAMS: dict[str, Callable[[ServerProcess, str, str, Event], object]] = {
    "pty": pty,
    "watch": watch,
    "exec-stream": exec_stream,
    "attach": attach,
    "wait": wait_poll,
}


@pytest.mark.parametrize("via", ["api", "cli"])
def test_revocation_ends_open_streams(server: ServerProcess, box: str, via: str) -> None:
    with server.client() as admin:
        created = admin.post("/orgs/apikeys", json={"keyName": f"streams-{via}"}).json()
        key, key_id = created["plainKey"], created["keyId"]
        readiness = {name: Event() for name in STREAMS}
        with ThreadPoolExecutor(len(STREAMS)) as pool:
            futures: dict[str, Future[object]] = {
                name: pool.submit(run, server, box, key, readiness[name])
                for name, run in STREAMS.items()
            }
            for name, ready in readiness.items():
                assert ready.wait(60), f"{name} never opened"
            assert not any(f.done() for f in futures.values())  # all still open
            if via == "api":
                assert admin.delete(f"/orgs/apikeys/{key_id}").status_code == 200
            else:
                result = server.cli("keys", "revoke", key_id, "--org", "default")
                assert result.returncode == 0, result.stderr
            done, pending = wait(futures.values(), timeout=BOUND)
            assert not pending, [n for n, f in futures.items() if not f.done()]
    outcome = {name: future.result() for name, future in futures.items()}
    assert outcome["pty"] == POLICY_VIOLATION
    assert outcome["watch"] == POLICY_VIOLATION
    name, data = outcome["exec-stream"]  # type: ignore[misc]
    assert name == "exit" and "revoked" in json.loads(data)["error"]
    name, data = outcome["attach"]  # type: ignore[misc]
    assert name == "error" and "revoked" in json.loads(data)["error"]
    assert outcome["wait"] == 401
