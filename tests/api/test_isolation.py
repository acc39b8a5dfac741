"""``isolation`` on create: stored, returned, validated; health names every isolation.

Sandboxes of several drivers side by side on one server are in the driver modules' own API
tests; this module holds what every server does whatever drivers this host has.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.drivers.microvm_harness import TEST_CACHE as MICROVM_CACHE
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
    """A server running namespace, gvisor and microvm sandboxes side by side, with a warm
    pool of one gvisor sandbox (none of the others)."""
    env = {
        "VOIDRUN_ISOLATIONS": '["namespace", "gvisor", "microvm"]',
        "VOIDRUN_WARM_POOL_SIZE": "0",
        "VOIDRUN_WARM_POOL_SIZES": '{"gvisor": 1}',
        "VOIDRUN_MICROVM_CACHE_DIR": str(MICROVM_CACHE),  # kernel, disks, templates: shared
    }
    with sandbox_server(**env) as proc:
        wait_for_isolation(proc, "gvisor")
        wait_for_isolation(proc, "microvm", seconds=300)
        yield proc


def sh(client: httpx.Client, box: dict[str, object], command: str) -> str:
    response = client.post(f"/sandboxes/{box['id']}/exec", json={"command": command})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["exitCode"] == 0, (command, data)
    return str(data["stdout"])


def test_three_isolations_side_by_side(mixed: ServerProcess) -> None:
    with mixed.client() as client:
        health = client.get("/health").json()["isolations"]
        assert health["gvisor"]["available"] and health["gvisor"]["platform"]
        assert health["microvm"]["available"] and health["microvm"]["accelerator"]
        plain = create_sandbox(client, name="plain")
        strong = create_sandbox(client, name="strong", isolation="gvisor")
        vm = create_sandbox(client, name="vm", isolation="microvm", ports=[{"port": 8000}])
        boxes = (plain, strong, vm)
        assert [b["isolation"] for b in boxes] == ["namespace", "gvisor", "microvm"]
        # each answers with its own kernel: the host's, gVisor's, the guest's
        assert sh(client, plain, "uname -r") == f"{os.uname().release}\n"
        assert "gVisor" in sh(client, strong, "dmesg")
        assert sh(client, vm, "uname -r") != f"{os.uname().release}\n"
        assert "microvm" not in sh(client, plain, "cat /proc/cmdline")
        # from the gvisor pool or booted: it has its own name either way
        assert sh(client, strong, "hostname") == "strong\n"
        assert sh(client, vm, "hostname") == "vm\n"
        pooled = create_sandbox(client, name="pooled", isolation="gvisor")
        assert sh(client, pooled, "hostname; cat /etc/hostname") == "pooled\npooled\n"
        assert client.delete(f"/sandboxes/{pooled['id']}").status_code == 200
        for box in boxes:  # the files API and the data plane, the same on all three
            made = client.post(
                f"/sandboxes/{box['id']}/files/create",
                params={"path": "/root/f.txt", "content": "kept"},
            )
            assert made.status_code == 200, made.text
        # lifecycle on the stronger ones: pause, resume, stop, start (the disk survives)
        for box in (strong, vm):
            for verb, status in (("pause", "paused"), ("resume", "running")):
                assert client.post(f"/sandboxes/{box['id']}/{verb}").status_code == 200
                assert client.get(f"/sandboxes/{box['id']}").json()["data"]["status"] == status
            assert client.post(f"/sandboxes/{box['id']}/stop").status_code == 200
            assert client.post(f"/sandboxes/{box['id']}/start").status_code == 200
            assert sh(client, box, "cat /root/f.txt") == "kept"
        # a preview of a server inside the VM: through its agent (no host namespace reaches it)
        serve = "cd /tmp && echo hello-vm > index.html && exec python3 -m http.server 8000"
        started = client.post(f"/sandboxes/{vm['id']}/commands/run", json={"command": serve})
        assert started.status_code == 200, started.text
        for _ in range(200):
            page = client.get(f"/sandboxes/{vm['id']}/ports/8000/index.html")
            if page.status_code == 200:
                break
            time.sleep(0.1)
        assert (page.status_code, page.text) == (200, "hello-vm\n")
        # snapshots are namespace-only: a 400 that says so, not a 500
        refused = client.post(f"/sandboxes/{strong['id']}/snapshot", json={"name": "nope"})
        assert_error(refused, 400)
        assert "isolation" in refused.json()["error"]

    mixed.stop()  # a restart re-adopts all three, each by its own driver
    mixed.start()
    with mixed.client() as client:
        # the namespace one at once; the others are "starting" until their drivers are up
        assert sh(client, plain, "cat /root/f.txt") == "kept"
        for box in (strong, vm):  # never marked killed while their drivers start
            assert client.get(f"/sandboxes/{box['id']}").json()["data"]["status"] == "running"
    wait_for_isolation(mixed, "gvisor")
    wait_for_isolation(mixed, "microvm", seconds=300)
    with mixed.client() as client:
        for box in boxes:
            again = client.get(f"/sandboxes/{box['id']}").json()["data"]
            assert again["status"] == "running" and again["isolation"] == box["isolation"]
            assert sh(client, box, "cat /root/f.txt") == "kept"
        assert "gVisor" in sh(client, strong, "dmesg")
        for box in boxes:
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
