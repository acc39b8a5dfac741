"""``GET /api/sandboxes/{id}/metrics`` and ``/events`` against a real sandbox, and the session
cookie on plain HTTP (the browser tier, tests/browser, drives the same through the dashboard)."""

from __future__ import annotations

from datetime import datetime

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.api.test_accounts import second_org
from tests.support.http import assert_error
from tests.support.sandboxes import (
    create_sandbox,
    shared_sandbox_server,  # noqa: F401 - the "server" fixture
)
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(600)]


def kinds(client: httpx.Client, sandbox: str) -> list[str]:
    response = client.get(f"/sandboxes/{sandbox}/events")
    assert response.status_code == 200, response.text
    return [event["kind"] for event in response.json()["data"]]


def test_metrics_and_events_of_a_sandbox(server: ServerProcess) -> None:
    with server.client() as client:
        box = str(create_sandbox(client, name="insights")["id"])
        sample = client.get(f"/sandboxes/{box}/metrics").json()["data"]
        assert sample["status"] == "running"
        assert sample["memoryBytes"] > 0 and sample["pids"] >= 1
        assert sample["cpuUsageNs"] > 0 and sample["memoryLimitBytes"] >= 1024 * 1024 * 1024
        assert sample["oomKills"] == 0 and sample["diskLimitMb"] == 256
        created = client.get(f"/sandboxes/{box}").json()["data"]["createdAt"]
        assert datetime.fromisoformat(sample["lastActivityAt"]) >= datetime.fromisoformat(created)
        assert client.post(f"/sandboxes/{box}/exec", json={"command": "true"}).status_code == 200
        after = client.get(f"/sandboxes/{box}/metrics").json()["data"]["lastActivityAt"]
        assert datetime.fromisoformat(after) > datetime.fromisoformat(sample["lastActivityAt"])

        assert client.post(f"/sandboxes/{box}/pause").status_code == 200
        # a data-plane call wakes it: the history tells that apart from an explicit resume
        assert client.post(f"/sandboxes/{box}/exec", json={"command": "true"}).status_code == 200
        assert client.post(f"/sandboxes/{box}/stop").status_code == 200
        assert kinds(client, box) == [
            "sandbox.stop",
            "sandbox.auto_resume",
            "sandbox.pause",
            "sandbox.create",
        ]
        stopped = client.get(f"/sandboxes/{box}/metrics").json()["data"]
        assert stopped["status"] == "stopped" and stopped["memoryBytes"] is None
        limited = client.get(f"/sandboxes/{box}/events", params={"limit": 1}).json()["data"]
        assert [e["kind"] for e in limited] == ["sandbox.stop"]
        for bad in ("0", "501", "x"):
            response = client.get(f"/sandboxes/{box}/events", params={"limit": bad})
            assert response.status_code == 400, response.text
            assert "error" in response.json()

        with server.client(second_org(server, "insights-other")) as other:
            for route in ("metrics", "events"):
                assert_error(other.get(f"/sandboxes/{box}/{route}"), 404)
        client.delete(f"/sandboxes/{box}")


def test_the_session_cookie_needs_its_csrf_token_to_change_state(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.api, timeout=30) as browser:
        assert_error(browser.post("/auth/session", json={"apiKey": "vr_" + "x" * 43}), 401)
        signed = browser.post("/auth/session", json={"apiKey": server.api_key})
        assert signed.status_code == 200, signed.text
        cookie = signed.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "secure" not in cookie
        token = signed.json()["csrfToken"]
        assert browser.get("/sandboxes").status_code == 200  # reads need only the cookie
        assert browser.get("/auth/session").json()["csrfToken"] == token
        assert_error(browser.post("/sandboxes", json={"name": "no-token"}), 403)
        wrong = browser.post("/sandboxes", json={"name": "x"}, headers={"X-CSRF-Token": "x"})
        assert_error(wrong, 403)
        made = browser.post("/sandboxes", json={"name": "token"}, headers={"X-CSRF-Token": token})
        assert made.status_code == 201, made.text
        box = made.json()["data"]["id"]
        assert_error(browser.delete(f"/sandboxes/{box}"), 403)
        deleted = browser.delete(f"/sandboxes/{box}", headers={"X-CSRF-Token": token})
        assert deleted.status_code == 200
        assert_error(browser.delete("/auth/session"), 403)  # signing out needs it too
        plain = browser.cookies["voidrun_session"]
        assert browser.delete("/auth/session", headers={"X-CSRF-Token": token}).status_code == 200
        assert "voidrun_session" not in browser.cookies
    replayed = httpx.get(f"{server.api}/sandboxes", cookies={"voidrun_session": plain})
    assert "sign in again" in assert_error(replayed, 401)["error"]


def test_a_websocket_with_the_session_cookie_must_come_from_this_origin(
    server: ServerProcess,
) -> None:
    signed = httpx.post(f"{server.api}/auth/session", json={"apiKey": server.api_key})
    cookie = f"voidrun_session={signed.cookies['voidrun_session']}"
    with server.client() as client:
        box = str(create_sandbox(client, name="ws-origin")["id"])
    url = f"ws://127.0.0.1:{server.port}/api/sandboxes/{box}/pty"
    own = f"http://127.0.0.1:{server.port}"
    with connect(url, additional_headers={"Cookie": cookie, "Origin": own}) as ws:
        ws.send("echo ok-$((40+2))\n")
        seen = ""
        while "ok-42" not in seen:
            seen += str(ws.recv(timeout=30))
    for origin in ("http://evil.example", f"http://127.0.0.1:{server.port + 1}"):
        with pytest.raises(InvalidStatus) as refused:
            connect(url, additional_headers={"Cookie": cookie, "Origin": origin})
        assert refused.value.response.status_code == 401
    with server.client() as client:
        client.delete(f"/sandboxes/{box}")
