"""Background commands over HTTP: a real server, the namespace driver, real sandboxes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import datetime

import httpx
import pytest

from tests.api.test_accounts import second_org
from tests.support.http import assert_error
from tests.support.sandboxes import (
    create_sandbox,
    sandbox_workdir,  # noqa: F401 - the "workdir" fixture
    shared_sandbox_server,  # noqa: F401 - the "server" fixture
)
from tests.support.server import ServerProcess
from voidrun_server.api.sse import MAX_LINE

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(900)]
RING_BYTES = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def sandbox(server: ServerProcess) -> str:
    with server.client() as client:
        return str(create_sandbox(client, name="cmd-box")["id"])


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def sh(client: httpx.Client, sandbox: str, command: str) -> str:
    """Run a helper command synchronously (the exec route)."""
    response = client.post(f"/sandboxes/{sandbox}/exec", json={"command": command})
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["stdout"])


def start(client: httpx.Client, sandbox: str, command: str, **extra: object) -> int:
    response = client.post(f"/sandboxes/{sandbox}/commands/run", json={"command": command, **extra})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True and body["command"] == command
    assert isinstance(body["pid"], int) and set(body) == {"success", "pid", "command"}
    return int(body["pid"])


def wait(client: httpx.Client, sandbox: str, pid: int) -> dict[str, object]:
    response = client.post(f"/sandboxes/{sandbox}/commands/wait", json={"pid": pid})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    assert body["success"] is True and isinstance(body["exitCode"], int)
    return body


def until(check: Callable[[], bool], what: str, seconds: float = 60.0) -> None:
    """Poll ``check`` until it holds; fail (saying ``what`` never happened) after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {seconds:g} s")
        time.sleep(0.02)


def listed(client: httpx.Client, sandbox: str) -> dict[int, dict[str, object]]:
    body = client.get(f"/sandboxes/{sandbox}/commands/list").json()
    assert body["success"] is True
    for process in body["processes"]:
        datetime.fromisoformat(process["startTime"])
        assert isinstance(process["running"], bool)
        assert ("exitCode" in process) is not process["running"]
    return {p["pid"]: p for p in body["processes"]}


def sse(response: httpx.Response) -> Iterator[tuple[str, str]]:
    """Parse SSE like the official SDK: event/data fields, dispatch on a blank line."""
    name, data = "", []
    for line in response.iter_lines():
        if not line:
            if data:
                yield name, "\n".join(data)
            name, data = "", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def test_run_list_attach_stdin_wait(client: httpx.Client, sandbox: str, workdir: str) -> None:
    script = f"echo first; echo oops >&2; touch {workdir}/printed1; "
    script += f"while [ ! -e {workdir}/gate1 ]; do sleep 0.02; done; "
    script += "echo live; read line; echo got $line; exit 3"
    pid = start(client, sandbox, script)
    assert listed(client, sandbox)[pid]["running"] is True
    # it printed its first lines before we attach (they come from the replay)
    until(lambda: "printed1" in sh(client, sandbox, f"ls {workdir}").split(), "first lines")

    events = []
    attach = {"pid": pid}
    with client.stream("POST", f"/sandboxes/{sandbox}/commands/attach", json=attach) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        for name, data in sse(stream):
            events.append((name, data))
            if data == "first":
                sh(client, sandbox, f"touch {workdir}/gate1")  # "live" comes after we attached
            if data == "live":
                stdin = {"pid": pid, "data": "hello\n"}
                written = client.post(f"/sandboxes/{sandbox}/commands/stdin", json=stdin)
                assert written.json() == {"success": True, "message": "Input written"}
    assert events == [
        ("stdout", "first"),
        ("stderr", "oops"),
        ("stdout", "live"),
        ("stdout", "got hello"),
        ("exit", '{"exitCode":3}'),
    ]
    assert wait(client, sandbox, pid) == {"success": True, "exitCode": 3}
    assert listed(client, sandbox)[pid]["exitCode"] == 3
    closed = client.post(f"/sandboxes/{sandbox}/commands/stdin", json={"pid": pid, "data": "x"})
    assert "closed" in assert_error(closed, 400)["error"]


def test_kill_takes_the_group_and_reads_137(client: httpx.Client, sandbox: str) -> None:
    pid = start(client, sandbox, "sleep 300 & sleep 300 & wait")
    members = f"ps -eo pid=,pgid=,stat= | awk '$2 == {pid} && $3 !~ /Z/'"
    # the shell and both sleeps are in the group before the kill
    until(lambda: len(sh(client, sandbox, members).splitlines()) >= 3, "three group members")
    killed = client.post(f"/sandboxes/{sandbox}/commands/kill", json={"pid": pid})
    assert killed.json() == {"success": True, "message": "Process killed"}
    assert wait(client, sandbox, pid)["exitCode"] == 137
    until(lambda: not sh(client, sandbox, members).strip(), "the whole group exiting")


def test_timeout_kills(client: httpx.Client, sandbox: str) -> None:
    pid = start(client, sandbox, "sleep 300", timeout=1)
    done = wait(client, sandbox, pid)
    assert done["exitCode"] == 124 and isinstance(done["error"], str)


def test_commands_outlive_requests_and_clients(
    server: ServerProcess, sandbox: str, workdir: str
) -> None:
    with server.client() as first:
        gate = f"{workdir}/gate2"
        pid = start(first, sandbox, f"while [ ! -e {gate} ]; do sleep 0.02; done; echo done")
        with first.stream(
            "POST", f"/sandboxes/{sandbox}/commands/attach", json={"pid": pid}
        ) as stream:
            assert stream.status_code == 200  # then the client goes away mid-stream
    with server.client() as second:
        assert listed(second, sandbox)[pid]["running"] is True
        sh(second, sandbox, f"touch {gate}")
        assert wait(second, sandbox, pid)["exitCode"] == 0
        attach = {"pid": pid}
        with second.stream("POST", f"/sandboxes/{sandbox}/commands/attach", json=attach) as s:
            assert list(sse(s)) == [("stdout", "done"), ("exit", '{"exitCode":0}')]


def test_output_ring_is_bounded(client: httpx.Client, sandbox: str) -> None:
    size = 3 * RING_BYTES
    pid = start(client, sandbox, f"head -c {size} /dev/zero | tr '\\0' x; echo; echo END")
    assert wait(client, sandbox, pid)["exitCode"] == 0
    with client.stream("POST", f"/sandboxes/{sandbox}/commands/attach", json={"pid": pid}) as s:
        events = list(sse(s))
    # The kept tail of the long line arrives in pieces of at most MAX_LINE bytes each.
    *pieces, end, last = events
    assert {name for name, _ in pieces} == {"stdout"} and end == ("stdout", "END")
    assert all(0 < len(text) <= MAX_LINE for _, text in pieces)
    kept = sum(len(text) for _, text in pieces)
    assert 0 < kept < RING_BYTES and len(pieces) == -(-kept // MAX_LINE)
    assert last[0] == "exit"
    assert json.loads(last[1]) == {"exitCode": 0, "outputDropped": size - kept}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("run", {}),
        ("run", {"command": ""}),
        ("run", {"command": "   "}),
        ("run", {"command": 123}),
        ("run", {"command": "true", "timeout": -1}),
        ("run", {"command": "true", "timeout": 901}),
        ("run", {"command": "true", "timeout": "5"}),
        ("run", {"command": "true", "timeout": 1.5}),
        ("run", {"command": "true", "env": {"A": 1}}),
        ("run", {"command": "true", "env": ["A=1"]}),
        ("run", {"command": "true", "cwd": "relative"}),
        ("run", {"command": "true", "cwd": "/no/such/dir"}),
        ("kill", {}),
        ("kill", {"pid": "12"}),
        ("kill", {"pid": 0}),
        ("kill", {"pid": True}),
        ("wait", {"pid": -5}),
        ("attach", {"pid": "x"}),
        ("stdin", {"pid": 1, "data": 5}),
        ("stdin", {"pid": 1, "eof": "yes"}),
    ],
)
def test_bad_input_is_400(client: httpx.Client, sandbox: str, path: str, body: object) -> None:
    assert_error(client.post(f"/sandboxes/{sandbox}/commands/{path}", json=body), 400)


def test_unparsable_body_is_400(client: httpx.Client, sandbox: str) -> None:
    headers = {"Content-Type": "application/json"}
    for path in ("run", "kill", "wait", "attach"):
        response = client.post(
            f"/sandboxes/{sandbox}/commands/{path}", content=b"{", headers=headers
        )
        assert_error(response, 400)
    assert_error(client.post(f"/sandboxes/{sandbox}/commands/run", json=[1]), 400)


def test_unknown_pid_is_404(client: httpx.Client, sandbox: str) -> None:
    for path, extra in (("kill", {}), ("wait", {}), ("attach", {}), ("stdin", {"data": "x"})):
        response = client.post(
            f"/sandboxes/{sandbox}/commands/{path}", json={"pid": 999_999, **extra}
        )
        assert_error(response, 404)


def test_other_org_and_unknown_sandbox_are_404(server: ServerProcess, sandbox: str) -> None:
    with server.client() as owner:
        pid = start(owner, sandbox, "sleep 30")
    other = second_org(server, "cmd-other")
    with server.client(other) as intruder:
        for target in (sandbox, "0" * 24, "nope"):
            assert_error(intruder.get(f"/sandboxes/{target}/commands/list"), 404)
            for path in ("kill", "wait", "attach"):
                response = intruder.post(f"/sandboxes/{target}/commands/{path}", json={"pid": pid})
                assert_error(response, 404)
            run = intruder.post(f"/sandboxes/{target}/commands/run", json={"command": "id"})
            assert_error(run, 404)
    with server.client() as owner:
        assert listed(owner, sandbox)[pid]["running"] is True
        owner.post(f"/sandboxes/{sandbox}/commands/kill", json={"pid": pid})
