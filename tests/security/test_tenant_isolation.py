"""Another org's key learns nothing about, and changes nothing in, this org's resources.

The routes are taken from the application's route table, so a new route is covered the day it
is added. For each route that names a resource, a request with org B's key for org A's real id
must get exactly the answer a nonexistent id gets (and never a 2xx); WebSockets must not open.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.api.test_accounts import new_key, second_org
from tests.support.routes import http_routes, websocket_routes
from tests.support.sandboxes import (
    create_sandbox,
    shared_sandbox_server,  # noqa: F401 - the "server" fixture
)
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
    """The template with real ids; ``session_id`` names a watch ticket under ``/files/watch/``
    and a terminal elsewhere, so each route gets a real object of its own kind."""
    if "/files/watch/" in path and "watch_id" in ids:
        ids = {**ids, "session_id": ids["watch_id"]}
    return re.sub(r"\{(\w+)\}", lambda m: ids.get(m.group(1), MISSING), path).removeprefix("/api")


def test_every_resource_route_hides_other_orgs(server: ServerProcess, tmp_path: Path) -> None:
    resource_routes, ws_routes = route_table(tmp_path)
    assert any("{sandbox_id}" in p for _, p in resource_routes), "route table looks empty"
    assert any("{session_id}" in p for _, p in resource_routes), "route table looks empty"
    with server.client() as owner:
        sandbox = str(create_sandbox(owner, name="victim", autoSleep=False)["id"])
        owner.post(f"/sandboxes/{sandbox}/exec", json={"command": "echo s3cret > /root/secret.txt"})
        key = new_key(owner, "victim-key")["keyId"]
        # real objects of org A, so a route answers "not found" only if tenancy says so
        terminal = owner.post(f"/sandboxes/{sandbox}/pty/sessions", json={})
        assert terminal.status_code == 200, terminal.text
        terminal_id = str(terminal.json()["data"]["sessionId"])
        watch = owner.post(f"/sandboxes/{sandbox}/files/watch", json={"path": "/root"})
        assert watch.status_code == 200, watch.text
        watch_id = str(watch.json()["data"]["sessionId"])
        command = owner.post(f"/sandboxes/{sandbox}/commands/run", json={"command": "sleep 900"})
        assert command.status_code == 200, command.text
        pid = int(command.json()["pid"])
        real = {"sandbox_id": sandbox, "key_id": key, "session_id": terminal_id}
        real["watch_id"] = watch_id
        body = {**BODY, "pid": pid, "sessionId": terminal_id}
        with server.client(second_org(server, "intruders")) as intruder:
            for method, template in resource_routes:
                seen = intruder.request(
                    method, fill(template, real), params=QUERY, json=body, timeout=30
                )
                unknown = intruder.request(
                    method, fill(template, {}), params=QUERY, json=body, timeout=30
                )
                where = f"{method} {template}"
                assert seen.status_code < 200 or seen.status_code >= 300, where
                assert (seen.status_code, seen.json()) == (unknown.status_code, unknown.json()), (
                    where
                )
            assert ws_routes, "no WebSocket routes found"
            key_param = f"?apiKey={intruder.headers['X-API-Key']}"
            for template in ws_routes:
                base = server.url.replace("http", "ws") + "/api"
                seen_ws = ws_refusal(base + fill(template, real) + key_param)
                unknown_ws = ws_refusal(base + fill(template, {}) + key_param)
                assert seen_ws[0] == 404 and seen_ws == unknown_ws, (template, seen_ws, unknown_ws)
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
        sessions = owner.get(f"/sandboxes/{sandbox}/pty/sessions").json()["data"]["sessions"]
        assert [s["id"] for s in sessions if s["alive"]] == [terminal_id]
        processes = owner.get(f"/sandboxes/{sandbox}/commands/list").json()["processes"]
        assert [p["running"] for p in processes if p["pid"] == pid] == [True]
        # the intruder's attempts did not use up the owner's watch ticket
        watch_url = f"{base}/sandboxes/{sandbox}/files/watch/{watch_id}/stream"
        with connect(f"{watch_url}?apiKey={owner.headers['X-API-Key']}", open_timeout=10):
            pass


def ws_refusal(url: str) -> tuple[int, Any]:
    """The HTTP status and JSON body that refused the WebSocket before the upgrade."""
    try:
        with connect(url, open_timeout=10, close_timeout=2):
            pass
    except InvalidStatus as exc:
        return exc.response.status_code, json.loads(exc.response.body or b"null")
    pytest.fail(f"{url} opened")


def test_websockets_need_a_valid_key(server: ServerProcess, tmp_path: Path) -> None:
    _, ws_routes = route_table(tmp_path)
    with server.client() as owner:
        sandbox = str(create_sandbox(owner, name="ws-victim")["id"])
    for template in ws_routes:
        url = server.url.replace("http", "ws") + "/api" + fill(template, {"sandbox_id": sandbox})
        for attempt in (url, f"{url}?apiKey=vr_{'x' * 43}"):
            status, body = ws_refusal(attempt)
            assert status == 401 and body["error"], (attempt, body)


def test_unauthenticated_requests_are_401_everywhere(server: ServerProcess, tmp_path: Path) -> None:
    public = {"/api/version", "/api/health", "/api/openapi.json", "/api/docs"}
    # the dashboard's sign-in takes the key in its body; GET is 401 without a session and
    # DELETE (sign-out) only clears a cookie (tests/api/test_insights.py)
    public.add("/api/auth/session")
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
