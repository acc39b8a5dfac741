"""Another process holds the SQLite write lock for a while: requests wait, nothing is lost."""

from __future__ import annotations

import json
import select
import socket
import sqlite3
from collections.abc import Iterator

import httpx
import pytest

from tests.support.server import ServerProcess


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(data_dir=tmp_path_factory.mktemp("busy")).start()
    try:
        yield proc
    finally:
        proc.stop()


def test_writes_wait_for_a_locked_database(server: ServerProcess) -> None:
    db = sqlite3.connect(server.data_dir / "voidrun.db", isolation_level=None, timeout=30)
    db.execute("BEGIN EXCLUSIVE")  # WAL: readers go on, writers wait
    body = json.dumps({"keyName": "while-locked"}).encode()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as write:
            # the write is on the wire (raw, so it is sent before we go on) ...
            write.sendall(
                b"POST /api/orgs/apikeys HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                + f"X-API-Key: {server.api_key}\r\nContent-Type: application/json\r\n".encode()
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            # ... a request sent after it is answered, so the server is serving meanwhile ...
            assert httpx.get(f"{server.api}/health", timeout=60).status_code == 200
            # ... and the write is still waiting for the lock
            assert select.select([write], [], [], 0)[0] == [], "the write did not wait"
            db.execute("COMMIT")
            answer = b""
            while chunk := write.recv(65536):
                answer += chunk
    finally:
        db.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.split()[1] == b"200", answer
    with server.client() as client:
        created = httpx.Response(200, content=payload)
        key_id = created.json()["keyId"]
        assert key_id in {k["id"] for k in client.get("/orgs/apikeys").json()}
