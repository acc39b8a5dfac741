"""Sandbox lifecycle over HTTP: a real server, the namespace driver, real sandboxes."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import httpx
import pytest

from tests.api.test_accounts import second_org
from tests.conftest import BACKENDS
from tests.support.http import assert_error
from tests.support.sandboxes import backend_env, create_sandbox, sandbox_server
from tests.support.server import ServerProcess
from voidrun_server.agentclient import AgentClient

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(900)]
SDK_UA = {"User-Agent": "VoidRun-Python-SDK/0.1.0"}


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """Once on SQLite (the default database) and once on PostgreSQL."""
    with sandbox_server(**backend_env(request.param)) as proc:
        yield proc


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


create = create_sandbox


def status_of(
    client: httpx.Client, sandbox_id: object, headers: dict[str, str] | None = None
) -> str:
    body = client.get(f"/sandboxes/{sandbox_id}", headers=headers or {}).json()
    assert body["success"] is True and body["status"] == "success"
    return str(body["data"]["status"])


def run_in(server: ServerProcess, sandbox_id: object, command: str) -> str:
    """Run a command through the sandbox's agent socket (the exec API is another issue)."""
    socket = server.data_dir / "sandboxes" / str(sandbox_id) / "disk" / "run" / "agent.sock"

    async def go() -> str:
        async with AgentClient(socket, connect_timeout=10) as agent:
            result = await agent.exec(command, timeout=30)
            assert result.exit_code == 0, result.stderr_text
            return result.stdout_text

    return anyio.run(go)


def test_create_returns_the_full_sandbox(client: httpx.Client) -> None:
    envelope = client.post("/sandboxes", json={"name": "plain"}).json()
    assert (envelope["status"], envelope["message"]) == ("success", "Sandbox created")
    assert envelope["data"]["autoSleep"] is True and envelope["data"]["cpu"] == 1
    box = create(
        client,
        name="full-box",
        envVars={"A": "1"},
        labels={"env": "test"},
        ports=[{"protocol": "http", "port": 8080}],
        region="eu",
        refId="r-1",
        autoSleep=False,
        cpu=2,
        mem=2048,
    )
    assert box["status"] == "running" and box["name"] == "full-box"
    assert box["image"] == "code:1.0.0"
    assert (box["cpu"], box["mem"], box["diskMB"]) == (2, 2048, 256)
    assert box["envVars"] == {"A": "1"} and box["labels"] == {"env": "test"}
    assert box["ports"] == [{"protocol": "http", "port": 8080}]
    assert box["region"] == "eu" and box["refId"] == "r-1" and box["autoSleep"] is False
    assert "nodeId" not in box
    urls = client.get(f"/sandboxes/{box['id']}/public-urls").json()
    assert urls["status"] == "success" and [u["port"] for u in urls["data"]] == [8080]


def test_lifecycle(server: ServerProcess, client: httpx.Client) -> None:
    box = create(client, name="life")
    sid = box["id"]
    assert "hello" in run_in(server, sid, "echo hello > /root/kept; cat /root/kept")
    assert run_in(server, sid, "hostname").strip() == "life"

    assert client.post(f"/sandboxes/{sid}/pause").json()["message"] == "Sandbox paused"
    assert status_of(client, sid) == "paused"
    assert status_of(client, sid, SDK_UA) == "snapshotted"
    wrong = assert_error(client.post(f"/sandboxes/{sid}/pause"), 400)
    assert wrong == {
        "error": "Invalid sandbox state",
        "details": "sandbox is not running (current status: paused)",
    }
    assert client.post(f"/sandboxes/{sid}/resume").json()["message"] == "Sandbox resumed"
    assert status_of(client, sid) == "running"
    assert_error(client.post(f"/sandboxes/{sid}/start"), 400)

    assert client.post(f"/sandboxes/{sid}/stop").json()["message"] == "Sandbox stopped"
    assert status_of(client, sid) == "stopped"
    assert client.post(f"/sandboxes/{sid}/start").json()["message"] == "Sandbox started"
    assert status_of(client, sid) == "running"
    assert run_in(server, sid, "cat /root/kept").strip() == "hello"

    def verb(name: str) -> object:
        response = client.post(f"/sandboxes/{sid}/{name}")
        assert response.status_code == 200, response.text
        return response.json()

    assert verb("sleep") == {"status": "success", "message": "Sandbox snapshotted"}
    assert status_of(client, sid) == "paused"
    assert verb("wake") == {"status": "success", "message": "Sandbox restored"}
    assert status_of(client, sid) == "running"
    assert verb("stop") == {"status": "success", "message": "Sandbox stopped"}
    assert status_of(client, sid) == "stopped"
    assert verb("wake") == {"status": "success", "message": "Sandbox restored"}
    assert status_of(client, sid) == "running"

    deleted = client.delete(f"/sandboxes/{sid}")
    assert deleted.json() == {"status": "success", "message": "Sandbox deleted"}
    assert status_of(client, sid) == "deleted"
    assert client.delete(f"/sandboxes/{sid}").status_code == 200
    assert not (server.data_dir / "sandboxes" / str(sid)).exists()
    listed = client.get("/sandboxes", params={"limit": 100}).json()["data"]
    assert sid not in {b["id"] for b in listed}


def test_list_paging_and_labels(client: httpx.Client) -> None:
    ids = [
        create(client, name=f"page-{i}", labels={"batch": "p", "n": str(i)})["id"] for i in range(3)
    ]
    page = client.get("/sandboxes", params={"labels": "batch=p", "page": 1, "limit": 2}).json()
    assert page["meta"] == {"page": 1, "limit": 2, "total": 3, "totalPages": 2}
    assert [b["id"] for b in page["data"]] == [ids[2], ids[1]]
    second = client.get("/sandboxes", params={"labels": "batch=p, n=0", "page": 2, "limit": 2})
    assert second.json()["data"] == [] and second.json()["meta"]["total"] == 1
    clamped = client.get("/sandboxes", params={"limit": 1000, "page": "x"}).json()["meta"]
    assert clamped["limit"] == 100 and clamped["page"] == 1
    assert_error(client.get("/sandboxes", params={"labels": "novalue"}), 400)
    for sid in ids:
        client.delete(f"/sandboxes/{sid}")


def test_list_filters_by_status_on_the_server(client: httpx.Client) -> None:
    ids = [create(client, name=f"state-{i}", labels={"batch": "s"})["id"] for i in range(3)]
    assert client.post(f"/sandboxes/{ids[0]}/pause").status_code == 200
    paused = client.get("/sandboxes", params={"status": "paused", "labels": "batch=s"}).json()
    assert [b["id"] for b in paused["data"]] == [ids[0]] and paused["meta"]["total"] == 1
    running = client.get("/sandboxes", params={"status": " running ", "limit": 100}).json()
    assert {b["status"] for b in running["data"]} == {"running"}
    assert {ids[1], ids[2]} <= {b["id"] for b in running["data"]} and ids[0] not in {
        b["id"] for b in running["data"]
    }
    both = client.get("/sandboxes", params={"status": "paused,running", "labels": "batch=s"})
    assert both.json()["meta"]["total"] == 3
    for bad in ("deleted", "asleep", "running,nope"):
        assert (
            "status filter"
            in assert_error(client.get("/sandboxes", params={"status": bad}), 400)["error"]
        )
    for sid in ids:
        client.delete(f"/sandboxes/{sid}")


def test_patch_is_strict(client: httpx.Client) -> None:
    sid = create(client, name="patchy")["id"]
    updated = client.patch(f"/sandboxes/{sid}", json={"autoSleep": False}).json()
    assert updated["message"] == "Sandbox updated" and updated["data"]["autoSleep"] is False
    for body in ({}, {"autoSleep": False, "x": 1}, {"autoSleep": "no"}, []):
        assert_error(client.patch(f"/sandboxes/{sid}", json=body), 400)
    client.delete(f"/sandboxes/{sid}")


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"name": ""}, "invalid name: value cannot be empty"),
        ({"name": "Bad_Name"}, "invalid name: value must be a valid DNS-1123 subdomain"),
        ({"name": "ok", "cpu": 9}, "invalid cpu count: must be between 1 and 8"),
        ({"name": "ok", "mem": 512}, "invalid memory size: must be between 1 GiB and 16 GiB"),
        ({"name": "ok", "labels": {str(i): "v" for i in range(6)}}, "too many labels: 6 given"),
        ({"name": "ok", "labels": {"Bad": "v"}}, 'invalid label key "Bad"'),
        ({"name": "ok", "ports": [{"port": 80}, {"port": 80}]}, "duplicate port 80"),
        ({"name": "ok", "publishPorts": [70000]}, "invalid publishPort 70000"),
        ({"name": "ok", "image": "nope"}, "image not found"),
        ({"name": "ok", "cpu": "many"}, "Invalid request"),
        ({}, "Invalid request"),
    ],
)
def test_create_validation(client: httpx.Client, body: dict[str, object], error: str) -> None:
    assert assert_error(client.post("/sandboxes", json=body), 400)["error"].startswith(error)


def test_other_orgs_see_404(server: ServerProcess, client: httpx.Client) -> None:
    sid = create(client, name="private")["id"]
    with server.client(second_org(server, "other-tenant")) as other:
        for method, path in [
            ("GET", f"/sandboxes/{sid}"),
            ("PATCH", f"/sandboxes/{sid}"),
            ("DELETE", f"/sandboxes/{sid}"),
            ("POST", f"/sandboxes/{sid}/stop"),
            ("POST", f"/sandboxes/{sid}/pause"),
            ("GET", f"/sandboxes/{sid}/public-urls"),
        ]:
            response = other.request(method, path, json={"autoSleep": True})
            assert assert_error(response, 404)["error"] == "Sandbox not found"
        assert sid not in {b["id"] for b in other.get("/sandboxes").json()["data"]}
    assert status_of(client, sid) == "running"
    assert_error(client.get("/sandboxes/" + "0" * 24), 404)
    assert_error(client.get("/sandboxes/not-an-id"), 404)
    client.delete(f"/sandboxes/{sid}")


def test_images(client: httpx.Client) -> None:
    images = client.get("/images").json()
    code = next(i for i in images if i["name"] == "code")
    assert code["tag"] == "1.0.0" and code["system"] is True and code["active"] is True
    assert isinstance(code["sizeGB"], int)
    assert client.get(f"/images/{code['id']}").json()["id"] == code["id"]
    assert client.get("/images/name/code").json()["id"] == code["id"]
    assert_error(client.get("/images/name/nope"), 404)
    assert_error(client.get("/images/name/" + "x" * 101), 400)
    assert_error(client.get("/images/" + "0" * 24), 404)


def test_restart_keeps_sandboxes(server: ServerProcess, client: httpx.Client) -> None:
    running = create(client, name="survivor")["id"]
    paused = create(client, name="sleeper")["id"]
    client.post(f"/sandboxes/{paused}/pause")
    run_in(server, running, "echo before > /root/mark")
    server.stop()
    server.start()
    with server.client() as fresh:
        assert status_of(fresh, running) == "running"
        assert status_of(fresh, paused) == "paused"
        assert run_in(server, running, "cat /root/mark").strip() == "before"
        assert fresh.post(f"/sandboxes/{paused}/resume").status_code == 200
        for sid in (running, paused):
            fresh.delete(f"/sandboxes/{sid}")
