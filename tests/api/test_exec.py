"""exec and exec-stream over HTTP against a real server and real sandboxes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator

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

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def sandbox(server: ServerProcess) -> str:
    with server.client() as client:
        return str(create_sandbox(client, name="exec-box", envVars={"FROM_BOX": "box"})["id"])


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def run(client: httpx.Client, sandbox: str, command: str, **extra: object) -> dict[str, object]:
    response = client.post(f"/sandboxes/{sandbox}/exec", json={"command": command, **extra})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success" and body["message"] == "ok"
    data: dict[str, object] = body["data"]
    assert isinstance(data["exitCode"], int)
    return data


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """Parse SSE like the official SDK: event/data fields, dispatch on a blank line."""
    name, data = "", []
    for line in lines:
        if not line:
            if data:
                yield name, "\n".join(data)
            name, data = "", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


@pytest.mark.parametrize(
    ("command", "code"), [("true", 0), ("false", 1), ("no-such-cmd", 127), ("kill -9 $$", 137)]
)
def test_exit_codes(client: httpx.Client, sandbox: str, command: str, code: int) -> None:
    assert run(client, sandbox, command)["exitCode"] == code


def test_stdout_stderr_env_cwd(client: httpx.Client, sandbox: str, workdir: str) -> None:
    data = run(client, sandbox, "echo out; echo err >&2; echo $FROM_BOX $MINE; pwd", cwd="/tmp",
               env={"MINE": "req"})  # fmt: skip
    assert data["stdout"] == "out\nbox req\n/tmp\n" and data["stderr"] == "err\n"
    override = run(client, sandbox, "echo $FROM_BOX", env={"FROM_BOX": "request"})
    assert override["stdout"] == "request\n"
    assert run(client, sandbox, "pwd")["stdout"] == f"{workdir}\n"
    missing = client.post(f"/sandboxes/{sandbox}/exec", json={"command": "pwd", "cwd": "/nope"})
    assert_error(missing, 400)


def test_timeout_kills_the_whole_tree(client: httpx.Client, sandbox: str) -> None:
    data = run(client, sandbox, "sleep 100 & sleep 100", timeout=1)
    assert data["exitCode"] == 124 and "timed out" in str(data["stderr"])
    assert run(client, sandbox, "pgrep -x sleep || true")["stdout"] == ""


def test_large_and_binary_output(client: httpx.Client, sandbox: str) -> None:
    data = run(client, sandbox, "head -c 7500000 /dev/zero | base64 -w 0")  # 10 MB of text
    expected = hashlib.sha256(__import__("base64").b64encode(b"\0" * 7_500_000)).hexdigest()
    assert hashlib.sha256(str(data["stdout"]).encode()).hexdigest() == expected
    binary = run(client, sandbox, r"printf 'ok\xff\xfe\x00end'")
    assert str(binary["stdout"]).startswith("ok") and str(binary["stdout"]).endswith("end")


def test_streaming_delivers_output_before_the_command_ends(
    client: httpx.Client, sandbox: str, workdir: str
) -> None:
    gate = f"{workdir}/gate-{time.monotonic_ns()}"
    command = f"echo first; while [ ! -e {gate} ]; do sleep 0.05; done; echo second >&2; exit 3"
    body = {"command": command, "timeout": 30, "env": None, "cwd": None}  # as the SDK sends it
    headers = {"Accept": "text/event-stream"}
    with client.stream(
        "POST", f"/sandboxes/{sandbox}/exec-stream", json=body, headers=headers
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.iter_lines())
        assert next(events) == ("stdout", "first")  # arrived while the command still waits
        run(client, sandbox, f"touch {gate}")
        assert list(events) == [("stderr", "second"), ("exit", '{"exitCode":3}')]


def test_stream_client_disconnect_kills_the_command(client: httpx.Client, sandbox: str) -> None:
    body = {"command": "echo ready; exec sleep 313"}
    with client.stream("POST", f"/sandboxes/{sandbox}/exec-stream", json=body) as r:
        assert next(sse_events(r.iter_lines())) == ("stdout", "ready")
    for _ in range(200):
        if run(client, sandbox, "pgrep -f '[s]leep 313' || true")["stdout"] == "":
            return
        time.sleep(0.05)
    pytest.fail("the streamed command survived its client")


def test_stream_validation_is_json(client: httpx.Client, sandbox: str) -> None:
    assert_error(client.post(f"/sandboxes/{sandbox}/exec-stream", json={"command": ""}), 400)
    assert_error(client.post("/sandboxes/" + "0" * 24 + "/exec-stream", json={"command": "x"}), 404)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"command": ""},
        {"command": "   "},
        {"command": "x" * 100_001},
        {"command": "true", "timeout": -1},
        {"command": "true", "timeout": 100_000},
        {"command": 5},
        {"command": "true", "env": {"A": 1}},
        {"command": "true", "env": "A=1"},
        [1],
    ],
)
def test_bad_input(client: httpx.Client, sandbox: str, body: object) -> None:
    assert_error(client.post(f"/sandboxes/{sandbox}/exec", json=body), 400)


@pytest.mark.parametrize("route", ["exec", "exec-stream", "commands/run"])
def test_arguments_too_large_for_the_agent_are_413(
    client: httpx.Client, sandbox: str, route: str
) -> None:
    """Under the 2 MiB body limit (600 KB of UTF-8), but over the agent's 1 MiB request frame
    once escaped (``\\u00e9``, six bytes a character): a clear 413, not a 500, and the
    sandbox's connection is still fine afterwards."""
    body = json.dumps({"command": "true", "env": {"BIG": "é" * 300_000}}, ensure_ascii=False)
    response = client.post(
        f"/sandboxes/{sandbox}/{route}",
        content=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    assert_error(response, 413)
    assert response.json()["error"] == "Request too large for the sandbox"
    assert run(client, sandbox, "echo still")["stdout"] == "still\n"


def test_unknown_and_foreign_sandboxes(
    server: ServerProcess, client: httpx.Client, sandbox: str
) -> None:
    assert_error(client.post("/sandboxes/" + "f" * 24 + "/exec", json={"command": "id"}), 404)
    with server.client(second_org(server, "exec-other")) as other:
        assert_error(other.post(f"/sandboxes/{sandbox}/exec", json={"command": "id"}), 404)


def test_exec_wakes_paused_and_stopped_sandboxes(client: httpx.Client) -> None:
    sid = str(create_sandbox(client, name="sleepy")["id"])
    run(client, sid, "echo kept > ~/f")
    client.post(f"/sandboxes/{sid}/pause")
    assert run(client, sid, "cat ~/f")["stdout"] == "kept\n"
    client.post(f"/sandboxes/{sid}/stop")
    assert run(client, sid, "cat ~/f")["stdout"] == "kept\n"
    assert client.get(f"/sandboxes/{sid}").json()["data"]["status"] == "running"
    client.delete(f"/sandboxes/{sid}")
    assert_error(client.post(f"/sandboxes/{sid}/exec", json={"command": "true"}), 404)


def test_concurrent_execs(server: ServerProcess, client: httpx.Client, sandbox: str) -> None:
    others = [str(create_sandbox(client, name=f"conc-{i}")["id"]) for i in range(9)]

    async def hammer() -> list[tuple[str, int, str]]:
        async with httpx.AsyncClient(
            base_url=server.api, headers={"X-API-Key": server.api_key}, timeout=120
        ) as ac:

            async def one(sid: str, i: int) -> tuple[str, int, str]:
                r = await ac.post(f"/sandboxes/{sid}/exec", json={"command": f"echo {i}"})
                return sid, i, r.json()["data"]["stdout"]

            calls = [one(sandbox, i) for i in range(100)]
            calls += [one(sid, i) for sid in [sandbox, *others] for i in range(10)]
            return await asyncio.gather(*calls)

    results = asyncio.run(hammer())
    assert len(results) == 200
    assert all(out == f"{i}\n" for _, i, out in results)
    for sid in others:
        client.delete(f"/sandboxes/{sid}")


def test_the_data_plane_follows_status_changes_at_once(
    server: ServerProcess, client: httpx.Client
) -> None:
    """Running sandboxes are served from memory (services/sandboxes.py ``_live``): each of this
    server's own status changes must apply to the very next data-plane call, and a sandbox
    known to be running stays invisible to another org."""
    sid = str(create_sandbox(client, name="live-map", autoSleep=False)["id"])
    unknown = "0" * 24
    for _ in range(3):
        assert run(client, sid, "true")["exitCode"] == 0
    with server.client(second_org(server, "live-map-intruders")) as intruder:
        theirs = intruder.post(f"/sandboxes/{sid}/exec", json={"command": "true"})
        missing = intruder.post(f"/sandboxes/{unknown}/exec", json={"command": "true"})
        assert (theirs.status_code, theirs.json()) == (missing.status_code, missing.json())
        assert theirs.status_code == 404
    for verb, status in (("stop", "stopped"), ("sleep", "paused")):
        assert client.post(f"/sandboxes/{sid}/{verb}").status_code == 200
        assert client.get(f"/sandboxes/{sid}").json()["data"]["status"] == status
        assert run(client, sid, "echo up")["stdout"] == "up\n"  # auto-wake
        assert client.get(f"/sandboxes/{sid}").json()["data"]["status"] == "running"
    assert client.delete(f"/sandboxes/{sid}").status_code == 200
    gone = client.post(f"/sandboxes/{sid}/exec", json={"command": "true"})
    assert_error(gone, 404)
