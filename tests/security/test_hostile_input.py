"""Hostile clients: path escapes on every file route, slow clients, header and query abuse."""

from __future__ import annotations

import json
import os
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.routes import http_routes
from tests.support.sandboxes import (
    create_sandbox,
    shared_sandbox_server,  # noqa: F401 - the "server" fixture
)
from tests.support.server import ServerProcess
from voidrun_server.api.app import create_app
from voidrun_server.config import Settings

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def host_secret() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="voidrun-host-secret-", dir="/var/tmp"))
    os.chmod(directory, 0o755)
    secret = directory / "secret.txt"
    secret.write_text("HOST-SECRET-d41d8cd98f\n")
    secret.chmod(0o600)
    yield secret
    secret.unlink(missing_ok=True)
    directory.rmdir()


def test_file_routes_never_reach_the_host(
    server: ServerProcess, host_secret: Path, tmp_path: Path
) -> None:
    routes = [
        (method, path.removeprefix("/api"))
        for method, path in http_routes(create_app(Settings(data_dir=tmp_path)).routes)
        if "/files" in path and "{session_id}" not in path
    ]
    assert len(routes) >= 15
    traversal = "/../../../../../.." + str(host_secret)
    with server.client() as client:
        sid = str(create_sandbox(client, name="escapes", autoSleep=False)["id"])
        # a symlink inside the sandbox that points at the host path
        client.post(
            f"/sandboxes/{sid}/exec",
            json={"command": f"ln -s {host_secret} /root/link; ln -s / /root/rootlink"},
        )
        for target in (traversal, "/root/link", "/root/rootlink" + str(host_secret)):
            params = {
                "path": target,
                "from": target,
                "to": "/root/stolen",
                "archive": target,
                "dest": "/root/out",
                "pattern": "secret",
                "mode": "0777",
                "format": "tar",
            }
            for method, template in routes:
                url = template.replace("{sandbox_id}", sid)
                body = b"overwritten" if url.endswith("/upload") else None
                response = client.request(method, url, params=params, content=body)
                assert response.status_code < 500, (method, template, response.text)
                assert b"HOST-SECRET" not in response.content, (method, template, target)
            stolen = client.post(
                f"/sandboxes/{sid}/exec",
                json={"command": "cat /root/stolen /root/out/* 2>/dev/null || true"},
            )
            assert "HOST-SECRET" not in stolen.text
    assert host_secret.read_text() == "HOST-SECRET-d41d8cd98f\n"
    assert stat.S_IMODE(host_secret.stat().st_mode) == 0o600


def test_slow_clients_do_not_block_others(server: ServerProcess) -> None:
    """Slowloris: many connections trickling a request never finish it; others are served."""
    slow = []
    try:
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(b"GET /api/version HTTP/1.1\r\nHost: x\r\n")
            slow.append(sock)
        for _ in range(3):
            for sock in slow:
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    pass  # the server may close them: that is fine too
            with server.client() as client:
                assert client.get("/version", timeout=10).status_code == 200
                assert client.get("/users/me", timeout=10).status_code == 200
            time.sleep(0.2)
    finally:
        for sock in slow:
            sock.close()


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Request-Id": "x" * 5000},
        {"Content-Type": "application/json; charset=utf-16"},
        {"User-Agent": "VoidRun-Python-SDK/" + "A" * 8000},
    ],
)
def test_header_abuse_is_handled(server: ServerProcess, headers: dict[str, str]) -> None:
    with server.client() as client:
        response = client.get("/users/me", headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["email"]
        request_id = response.headers["x-request-id"]  # an unusable one is replaced
        assert "\r" not in request_id and "\n" not in request_id and len(request_id) <= 128


def raw_request(server: ServerProcess, head: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """Send a request head byte for byte (no client library to refuse it): the server's answer
    as (status, headers, body), read until it closes the connection."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"GET /api/users/me HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    raw_head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = raw_head.decode("latin-1").split("\r\n")
    headers = [
        (k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines)
    ]
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(
    ("header", "status"),
    [
        # CR or LF alone inside a value: malformed, refused before the app
        (b"X-Request-Id: evil\rSet-Cookie: a=b\r\n", 400),
        (b"X-Request-Id: evil\nSet-Cookie: a=b\r\n", 400),
        (b"X-Request-Id: ok\x00x\r\n", 400),
        # CRLF ends the value: "Set-Cookie" is just another request header, never echoed
        (b"X-Request-Id: evil\r\nSet-Cookie: a=b\r\n", 200),
        # a key that is not ASCII (UTF-8 and Latin-1 bytes): an invalid key, not a crash
        ("X-API-Key: vr_\u00e9\u00e9\r\n".encode(), 401),
        ("X-API-Key: vr_\u00e9\u00e9\r\n".encode("latin-1"), 401),
    ],
)
def test_raw_header_abuse_gets_a_real_answer(
    server: ServerProcess, header: bytes, status: int
) -> None:
    """What httpx/h11 refuse to send, sent anyway: the server's own answer is checked."""
    key = b"" if b"X-API-Key" in header else f"X-API-Key: {server.api_key}\r\n".encode()
    got, headers, body = raw_request(server, key + header + b"\r\n")
    assert got == status, body
    names = [name for name, _ in headers]
    assert "set-cookie" not in names and names.count("x-request-id") <= 1, headers
    assert dict(headers)["content-type"].startswith("application/json"), headers
    answer = json.loads(body)
    if status == 200:
        assert answer["email"] and dict(headers)["x-request-id"] == "evil"
    else:
        assert isinstance(answer["error"], str) and answer["error"]
        assert set(answer) <= {"error", "details"}
    with server.client() as client:  # still serving
        assert client.get("/users/me", timeout=10).status_code == 200


@pytest.mark.parametrize(
    "query",
    [
        {"page": "1; DROP TABLE sandboxes"},
        {"limit": "-1e309"},
        {"labels": "a=b,' OR 1=1 --=x"},
        {"labels": "=" * 300},
        {"page": "\x00"},
    ],
)
def test_query_injection_is_harmless(server: ServerProcess, query: dict[str, str]) -> None:
    with server.client() as client:
        response = client.get("/sandboxes", params=query)
        assert response.status_code in (200, 400), response.text
        assert client.get("/sandboxes").status_code == 200
