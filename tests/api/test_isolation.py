"""``isolation`` on create: stored, returned, validated; health names every isolation.

Sandboxes of several drivers side by side on one server are in the driver modules' own API
tests; this module holds what every server does whatever drivers this host has.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import httpx
import pytest

from tests.support.http import assert_error
from tests.support.sandboxes import create_sandbox, sandbox_server, wait_for_isolation
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    # "nosuch" is a driver this build does not know: offered, so it must show as unavailable
    with sandbox_server(
        VOIDRUN_ISOLATIONS='["namespace", "nosuch"]', VOIDRUN_WARM_POOL_SIZE="0"
    ) as proc:
        yield proc


def test_default_isolation_is_stored_and_returned(server: ServerProcess) -> None:
    with server.client() as client:
        box = create_sandbox(client, name="plain")
        assert box["isolation"] == "namespace"
        again = client.get(f"/sandboxes/{box['id']}").json()["data"]
        assert again["isolation"] == "namespace"
        listed = client.get("/sandboxes").json()["data"]
        assert {b["id"]: b["isolation"] for b in listed}[box["id"]] == "namespace"
        named = create_sandbox(client, name="named", isolation="namespace")
        assert named["isolation"] == "namespace"
        out = client.post(f"/sandboxes/{named['id']}/exec", json={"command": "echo hi"})
        assert out.json()["data"]["stdout"] == "hi\n"


def test_unknown_and_unavailable_isolations_are_400(server: ServerProcess) -> None:
    with server.client() as client:
        before = client.get("/sandboxes").json()["meta"]["total"]
        wrong = client.post("/sandboxes", json={"name": "x", "isolation": "vmware"})
        assert_error(wrong, 400)
        assert "vmware" in wrong.json()["error"]
        assert "namespace" in wrong.json()["details"]  # what this server runs
        missing = client.post("/sandboxes", json={"name": "x", "isolation": "nosuch"})
        assert_error(missing, 400)
        assert "not available" in missing.json()["error"]
        typed = client.post("/sandboxes", json={"name": "x", "isolation": 3})
        assert_error(typed, 400)
        assert client.get("/sandboxes").json()["meta"]["total"] == before  # nothing made


def test_health_reports_every_offered_isolation(server: ServerProcess) -> None:
    with server.client() as client:
        health = client.get("/health").json()
    assert health["sandboxes"] == "ok"
    isolations = health["isolations"]
    assert isolations["namespace"] == {"available": True, "default": True}
    assert isolations["nosuch"]["available"] is False
    assert "nosuch" in isolations["nosuch"]["reason"]


@pytest.fixture(scope="module")
def mixed() -> Iterator[ServerProcess]:
    """A server running namespace and gvisor sandboxes side by side."""
    env = {"VOIDRUN_ISOLATIONS": '["namespace", "gvisor"]', "VOIDRUN_WARM_POOL_SIZE": "0"}
    with sandbox_server(**env) as proc:
        wait_for_isolation(proc, "gvisor")
        yield proc


def sh(client: httpx.Client, box: dict[str, object], command: str) -> str:
    response = client.post(f"/sandboxes/{box['id']}/exec", json={"command": command})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["exitCode"] == 0, (command, data)
    return str(data["stdout"])


def test_namespace_and_gvisor_side_by_side(mixed: ServerProcess) -> None:
    with mixed.client() as client:
        health = client.get("/health").json()["isolations"]
        assert health["gvisor"]["available"] and health["gvisor"]["platform"]
        plain = create_sandbox(client, name="plain")
        strong = create_sandbox(client, name="strong", isolation="gvisor")
        assert (plain["isolation"], strong["isolation"]) == ("namespace", "gvisor")
        # gVisor's kernel answers inside; the host's (shared with namespace sandboxes) outside
        assert "gVisor" in sh(client, strong, "dmesg")
        assert sh(client, plain, "uname -r") == f"{os.uname().release}\n"
        for box in (plain, strong):  # the files API and the data plane, the same on both
            made = client.post(
                f"/sandboxes/{box['id']}/files/create",
                params={"path": "/root/f.txt", "content": "kept"},
            )
            assert made.status_code == 200, made.text
        # lifecycle on the gvisor one: pause, resume, stop, start (its disk survives)
        for verb, status in (("pause", "paused"), ("resume", "running")):
            assert client.post(f"/sandboxes/{strong['id']}/{verb}").status_code == 200
            assert client.get(f"/sandboxes/{strong['id']}").json()["data"]["status"] == status
        assert client.post(f"/sandboxes/{strong['id']}/stop").status_code == 200
        assert client.post(f"/sandboxes/{strong['id']}/start").status_code == 200
        assert sh(client, strong, "cat /root/f.txt") == "kept"
        # snapshots are namespace-only: a 400 that says so, not a 500
        refused = client.post(f"/sandboxes/{strong['id']}/snapshot", json={"name": "nope"})
        assert_error(refused, 400)
        assert "isolation" in refused.json()["error"]

    mixed.stop()  # a restart re-adopts both, each by its own driver
    mixed.start()
    with mixed.client() as client:
        # the namespace one at once; the gvisor one is "starting" until its driver is up
        assert sh(client, plain, "cat /root/f.txt") == "kept"
        early = client.get(f"/sandboxes/{strong['id']}").json()["data"]
        assert early["status"] == "running"  # never marked killed while its driver starts
    wait_for_isolation(mixed, "gvisor")
    with mixed.client() as client:
        for box in (plain, strong):
            again = client.get(f"/sandboxes/{box['id']}").json()["data"]
            assert again["status"] == "running" and again["isolation"] == box["isolation"]
            assert sh(client, box, "cat /root/f.txt") == "kept"
        assert "gVisor" in sh(client, strong, "dmesg")
        for box in (plain, strong):
            assert client.delete(f"/sandboxes/{box['id']}").status_code == 200


def test_purge_destroys_the_sandboxes_of_every_isolation() -> None:
    """`voidrun-server purge` with the server stopped: gvisor sandboxes go through their own
    driver, then the namespace ones and the network they shared."""
    env = {"VOIDRUN_ISOLATIONS": '["namespace", "gvisor"]', "VOIDRUN_WARM_POOL_SIZE": "0"}
    with sandbox_server(**env) as proc:
        wait_for_isolation(proc, "gvisor")
        with proc.client() as client:
            strong = create_sandbox(client, name="strong", isolation="gvisor")
            plain = create_sandbox(client, name="plain")
        runsc = [p for p in _processes() if strong["id"] in p]
        assert runsc, "no runsc process names the gvisor sandbox"
        proc.stop()  # sandboxes outlive the server on purpose
        result = proc.cli("purge", "--yes", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(result.stdout)
        assert {strong["id"], plain["id"]} <= set(report["sandboxes"])
        assert report["left"] == [] and report["errors"] == []
        assert not [p for p in _processes() if strong["id"] in p]
        assert not list((proc.data_dir / "gvisor").glob(f"{strong['id']}*"))


def _processes() -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    found.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return found
