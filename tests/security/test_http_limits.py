"""HTTP limits that hold before the app sees a request: head size, head time, connections.

Against a real ``voidrun-server serve``; raw sockets where httpx would refuse to send the
request. Waits are bounded loops with generous ceilings; nothing asserts a speed.
"""

from __future__ import annotations

import json
import re
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.support.http import assert_error
from tests.support.sandboxes import create_sandbox, sandbox_server
from tests.support.server import ServerProcess

pytestmark = pytest.mark.timeout(300)
HEAD_TIMEOUT = 1.0  # seconds, short so the timeout tests are quick
CLOSE_CEILING = 20.0  # a generous bound on waiting for the server to close a connection


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"VOIDRUN_REQUEST_HEAD_TIMEOUT_SECONDS": str(HEAD_TIMEOUT)}
    proc = ServerProcess(tmp_path_factory.mktemp("limits"), extra_env=env).start()
    yield proc
    proc.stop()


def open_socket(server: ServerProcess) -> socket.socket:
    sock = socket.socket()
    # A small send buffer: what the client has pushed is close to what the server has read.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
    sock.connect(("127.0.0.1", server.port))
    return sock


def push(sock: socket.socket, data: bytes) -> int:
    """Send ``data`` until done, the server answers, or it closes; return the bytes sent."""
    sock.setblocking(False)
    sent = 0
    try:
        while sent < len(data):
            readable, writable, _ = select.select([sock], [sock], [], CLOSE_CEILING)
            if readable or not writable:
                break  # the server answered (or hung up) before we finished
            sent += sock.send(data[sent : sent + 16 * 1024])
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        sock.setblocking(True)
    return sent


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read until the server closes; return status, headers and body."""
    sock.settimeout(CLOSE_CEILING)
    raw = b""
    try:
        while chunk := sock.recv(65536):
            raw += chunk
    except ConnectionResetError:
        pass  # a reset after the response (we sent bytes it never read) is fine
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), raw[:200]
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def assert_json_error(headers: dict[str, str], body: bytes) -> dict[str, str]:
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    parsed = json.loads(body)
    assert set(parsed) == {"error", "details"} and all(isinstance(v, str) for v in parsed.values())
    return dict(parsed)


def server_memory(server: ServerProcess) -> dict[str, int]:
    assert server.process is not None
    status = Path(f"/proc/{server.process.pid}/status").read_text().splitlines()
    return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in status)
            if k in ("VmRSS", "VmHWM")}  # fmt: skip


def big_header_request(size: int) -> bytes:
    return b"GET /api/users/me HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n"


def test_oversized_head_is_431_before_it_is_read(server: ServerProcess) -> None:
    request = big_header_request(1024 * 1024)  # and no API key
    with open_socket(server) as sock:
        sent = push(sock, request)
        status, headers, body = read_response(sock)
    assert status == 431
    assert "65536" in assert_json_error(headers, body)["details"]
    assert sent < len(request), "the server read the whole 1 MiB head before answering"
    assert httpx.get(f"{server.api}/version").status_code == 200


def test_a_20_mib_header_does_not_grow_server_memory(server: ServerProcess) -> None:
    assert server.process is not None
    before = server_memory(server)["VmRSS"]
    # Reset the peak (VmHWM) to the current RSS, so a transient buffer shows up too.
    Path(f"/proc/{server.process.pid}/clear_refs").write_text("5")
    request = big_header_request(20 * 1024 * 1024)
    with open_socket(server) as sock:
        push(sock, request)
        status, _, _ = read_response(sock)
    assert status == 431
    grown = server_memory(server)["VmHWM"] - before
    assert grown < 8 * 1024 * 1024, f"server peak memory grew by {grown} bytes"


def test_overlong_request_line_is_414(server: ServerProcess) -> None:
    request = b"GET /api/version?q=" + b"a" * (200 * 1024) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    with open_socket(server) as sock:
        push(sock, request)
        status, headers, body = read_response(sock)
    assert status == 414
    assert_json_error(headers, body)


def test_a_head_just_under_the_limit_is_served(server: ServerProcess) -> None:
    request = b"GET /api/version HTTP/1.1\r\nHost: x\r\nX-Pad: "
    request += b"a" * (65536 - len(request) - 4 - 24) + b"\r\nConnection: close\r\n\r\n"
    assert len(request) <= 65536
    with open_socket(server) as sock:
        sock.sendall(request)
        status, _, body = read_response(sock)
    assert status == 200 and json.loads(body)["version"]


def test_heads_under_the_limit_followed_by_more_bytes_are_served(server: ServerProcess) -> None:
    """A read that holds a head under the limit plus a body, or plus the next request."""
    body = json.dumps({"keyName": "padded", "pad": "b" * 20000}).encode()
    head = (
        f"POST /api/orgs/apikeys HTTP/1.1\r\nHost: x\r\nX-API-Key: {server.api_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nX-Pad: "
    ).encode()
    head += b"a" * (60000 - len(head)) + b"\r\n\r\n"
    pipelined = b"GET /api/version HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"c" * 40000 + b"\r\n\r\n"
    closing = b"GET /api/version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with open_socket(server) as sock:
        sock.sendall(head + body + pipelined + pipelined + closing)
        sock.settimeout(CLOSE_CEILING)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)
    assert statuses == [b"200"] * 4, raw[:500]
    assert b'"keyName":"padded"' in raw


def test_silent_and_slowloris_connections_are_closed(server: ServerProcess) -> None:
    with open_socket(server) as silent:  # sends nothing at all
        status, headers, body = read_response(silent)
    assert status == 408
    assert_json_error(headers, body)

    with open_socket(server) as slow:
        slow.sendall(b"GET /api/version HTTP/1.1\r\nHost: x\r\n")
        deadline = time.monotonic() + CLOSE_CEILING
        closed = False
        while not closed and time.monotonic() < deadline:
            try:
                slow.sendall(b"X")  # one header byte every 200 ms, never finishing the head
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            closed = closed or bool(select.select([slow], [], [], 0.2)[0])
        assert closed, "the server kept a slowloris connection open"

    # a fresh connection is served normally, and so is a keep-alive one after a pause
    with httpx.Client(base_url=server.api) as client:
        assert client.get("/version").status_code == 200
        time.sleep(HEAD_TIMEOUT * 1.5)  # idle between requests is keep-alive, not head time
        assert client.get("/version").status_code == 200


def test_a_slow_body_is_not_cut_by_the_head_timeout(server: ServerProcess) -> None:
    body = json.dumps({"keyName": "slow-body"}).encode()
    head = (
        f"POST /api/orgs/apikeys HTTP/1.1\r\nHost: x\r\nX-API-Key: {server.api_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with open_socket(server) as sock:
        sock.sendall(head)
        started = time.monotonic()
        for byte in body:  # the body takes longer than the head timeout
            sock.sendall(bytes([byte]))
            time.sleep(HEAD_TIMEOUT * 2.5 / len(body))
        assert time.monotonic() - started > HEAD_TIMEOUT
        status, _, response = read_response(sock)
    assert status == 200, response
    assert json.loads(response)["keyName"] == "slow-body"


def test_query_key_only_on_websockets(server: ServerProcess) -> None:
    response = httpx.get(f"{server.api}/users/me", params={"apiKey": server.api_key})
    error = assert_error(response, 401)
    assert "X-API-Key header" in error["details"] and "WebSocket" in error["details"]
    # the same key in the query of a WebSocket route passes authentication: what fails next is
    # the unknown sandbox (or no sandbox driver on this server), not the key
    url = f"ws://127.0.0.1:{server.port}/api/sandboxes/{'0' * 24}/pty"
    statuses = {}
    for label, query in (("key", f"?apiKey={server.api_key}"), ("none", "")):
        with pytest.raises(InvalidStatus) as refused:
            connect(url + query, open_timeout=CLOSE_CEILING).close()
        statuses[label] = refused.value.response.status_code
    assert statuses["none"] == 401
    assert statuses["key"] in (404, 503)


def test_connection_limit(tmp_path: Path) -> None:
    env = {"VOIDRUN_MAX_CONNECTIONS": "8", "VOIDRUN_REQUEST_HEAD_TIMEOUT_SECONDS": "60"}
    proc = ServerProcess(tmp_path, extra_env=env).start()
    idle: list[socket.socket] = []
    try:
        idle = [socket.create_connection(("127.0.0.1", proc.port)) for _ in range(8)]
        with socket.create_connection(("127.0.0.1", proc.port)) as extra:
            status, headers, body = read_response(extra)
        assert status == 503
        assert_json_error(headers, body)
        assert proc.process is not None and proc.process.poll() is None
        for sock in idle:
            sock.close()
        deadline = time.monotonic() + CLOSE_CEILING
        while True:  # the server notices the closes asynchronously
            try:
                if httpx.get(f"{proc.api}/version").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "requests still refused after the idle closed"
            time.sleep(0.05)
        with httpx.Client(base_url=proc.api, headers={"X-API-Key": proc.api_key}) as client:
            assert client.get("/users/me").status_code == 200
    finally:
        for sock in idle:
            sock.close()
        proc.stop()


@pytest.mark.sandbox
def test_streams_outlive_the_head_timeout() -> None:
    """An SSE response and a WebSocket stay open well past the head timeout."""
    with sandbox_server(VOIDRUN_REQUEST_HEAD_TIMEOUT_SECONDS=str(HEAD_TIMEOUT)) as proc:
        with proc.client() as client:
            sid = str(create_sandbox(client, name="streams", autoSleep=False)["id"])
            body = {"command": f"echo start; sleep {HEAD_TIMEOUT * 3}; echo end"}
            with client.stream("POST", f"/sandboxes/{sid}/exec-stream", json=body) as r:
                assert r.status_code == 200
                text = "".join(r.iter_text())
            assert "start" in text and "end" in text and "exit" in text

        url = f"ws://127.0.0.1:{proc.port}/api/sandboxes/{sid}/pty?apiKey={proc.api_key}"
        with connect(url, open_timeout=CLOSE_CEILING) as ws:
            ws.send("echo first-$((20+1))\n")
            seen = ""
            while "first-21" not in seen:
                seen += str(ws.recv(timeout=CLOSE_CEILING))
            time.sleep(HEAD_TIMEOUT * 3)  # idle longer than the head timeout
            ws.send("echo second-$((20+2))\n")
            while "second-22" not in seen:
                seen += str(ws.recv(timeout=CLOSE_CEILING))
