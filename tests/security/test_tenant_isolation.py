"""Another org's key learns nothing about, and changes nothing in, this org's resources.

The routes are taken from the application's route table, so a new route is covered the day it
is added. For each route that names a resource, a request with org B's key for org A's real id
must get exactly the answer a nonexistent id gets (and never a 2xx); WebSockets must not open.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.api.test_accounts import new_key, second_org
from tests.support.routes import http_routes, websocket_routes
from tests.support.sandboxes import create_sandbox, sandbox_server
from tests.support.server import ServerProcess
from voidrun_server.api.app import create_app
from voidrun_server.config import Settings

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(900)]
MISSING = "0" * 24
QUERY = {
    "path": "/root/secret.txt",
    "from": "/root/secret.txt",
    "to": "/root/copy.txt",
    "mode": "0644",
    "pattern": "secret",
    "archive": "/root/a.tar.gz",
    "dest": "/root/x",
    "format": "tar.gz",
    "lines": "5",
}
BODY = {
    "command": "echo owned > /root/owned",
    "pid": 1,
    "action": "exec",
    "sessionId": "sess-0000000000000000",
    "path": "/root",
    "keyName": "stolen",
    "isActive": False,
    "autoSleep": False,
    "cols": 80,
    "rows": 24,
    "data": "x",
    "content": "x",
}


def route_table(tmp_path: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """Routes that name a resource: (method, path) for HTTP, paths for WebSockets."""
    routes = create_app(Settings(data_dir=tmp_path)).routes
    http = [(method, path) for method, path in http_routes(routes) if "{" in path]
    return http, [path for path in websocket_routes(routes) if "{" in path]


def fill(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: ids.get(m.group(1), MISSING), path).removeprefix("/api")


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with sandbox_server() as proc:
        yield proc


def test_every_resource_route_hides_other_orgs(server: ServerProcess, tmp_path: Path) -> None:
    resource_routes, ws_routes = route_table(tmp_path)
    assert any("{sandbox_id}" in p for _, p in resource_routes), "route table looks empty"
    with server.client() as owner:
        sandbox = str(create_sandbox(owner, name="victim", autoSleep=False)["id"])
        owner.post(f"/sandboxes/{sandbox}/exec", json={"command": "echo s3cret > /root/secret.txt"})
        key = new_key(owner, "victim-key")["keyId"]
        real = {"sandbox_id": sandbox, "key_id": key}
        with server.client(second_org(server, "intruders")) as intruder:
            for method, template in resource_routes:
                seen = intruder.request(
                    method, fill(template, real), params=QUERY, json=BODY, timeout=30
                )
                unknown = intruder.request(
                    method, fill(template, {}), params=QUERY, json=BODY, timeout=30
                )
                where = f"{method} {template}"
                assert seen.status_code < 200 or seen.status_code >= 300, where
                assert (seen.status_code, seen.json()) == (unknown.status_code, unknown.json()), (
                    where
                )
            for template in ws_routes:
                url = server.url.replace("http", "ws") + "/api" + fill(template, real)
                assert_ws_refused(f"{url}?apiKey={intruder.headers['X-API-Key']}")
            assert ws_routes, "no WebSocket routes found"
            assert intruder.headers["X-API-Key"] not in server.log_path.read_text(), "key logged"
        # nothing of org A changed
        state = owner.get(f"/sandboxes/{sandbox}").json()["data"]
        assert state["status"] == "running" and state["autoSleep"] is False
        check = owner.post(
            f"/sandboxes/{sandbox}/exec",
            json={"command": "cat /root/secret.txt; ls /root/owned 2>&1 || true"},
        ).json()["data"]
        assert check["stdout"].startswith("s3cret\n") and "No such file" in check["stdout"]
        assert key in {k["id"] for k in owner.get("/orgs/apikeys").json()}
        assert next(k for k in owner.get("/orgs/apikeys").json() if k["id"] == key)["isActive"]


def assert_ws_refused(url: str) -> None:
    try:
        with connect(url, open_timeout=10, close_timeout=2) as ws:
            try:
                frame = ws.recv(timeout=3)
            except (ConnectionClosed, TimeoutError):
                return
            pytest.fail(f"{url} opened and sent {frame!r}")
    except InvalidStatus as exc:
        assert exc.response.status_code in (401, 403, 404), url


def test_websockets_need_a_valid_key(server: ServerProcess, tmp_path: Path) -> None:
    _, ws_routes = route_table(tmp_path)
    with server.client() as owner:
        sandbox = str(create_sandbox(owner, name="ws-victim")["id"])
    for template in ws_routes:
        url = server.url.replace("http", "ws") + "/api" + fill(template, {"sandbox_id": sandbox})
        assert_ws_refused(url)
        assert_ws_refused(f"{url}?apiKey=vr_{'x' * 43}")


def test_unauthenticated_requests_are_401_everywhere(server: ServerProcess, tmp_path: Path) -> None:
    public = {"/api/version", "/api/health", "/api/openapi.json", "/api/docs"}
    every = [
        (method, path)
        for method, path in http_routes(create_app(Settings(data_dir=tmp_path)).routes)
        if path.startswith("/api") and path not in public
    ]
    assert len(every) > 20
    for method, template in every:
        response = httpx.request(
            method, server.url + "/api" + fill(template, {}), params=QUERY, json=BODY, timeout=30
        )
        assert response.status_code == 401, f"{method} {template}: {response.status_code}"
