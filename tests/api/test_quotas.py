"""Org quotas and the host free-space floor, against a real server and real sandboxes."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.http import assert_error
from tests.support.sandboxes import (
    create_sandbox,
    sandbox_server,
    shared_sandbox_server,  # noqa: F401 - the "server" fixture
)
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(900)]
MIB = 1024 * 1024


def quota(server: ServerProcess, *options: str) -> dict[str, dict[str, object]]:
    result = server.cli("orgs", "quota", "default", "--json", *options)
    assert result.returncode == 0, result.stderr
    report: dict[str, dict[str, object]] = json.loads(result.stdout)
    return report


def refused(response: httpx.Response, limit: str) -> str:
    body = assert_error(response, 403)
    assert body["error"] == "Org quota exceeded"
    details = str(body["details"])
    assert details.startswith(f"{limit} quota of org 'default'")
    assert "in use" in details and "requested" in details and "limit" in details
    assert "voidrun-server orgs quota default" in details
    return details


def test_quotas_on_create_and_start(server: ServerProcess) -> None:
    quota(server, "--max-sandboxes", "3", "--cpu", "3")
    try:
        with server.client() as client:
            first = create_sandbox(client, name="q1", cpu=2)
            details = refused(client.post("/sandboxes", json={"name": "q2", "cpu": 2}), "CPUs")
            assert "2 in use + 2 requested > limit 3" in details
            create_sandbox(client, name="q2", cpu=1)
            # A stopped sandbox releases CPU and memory but keeps its disk and its place.
            assert client.post(f"/sandboxes/{first['id']}/stop").status_code == 200
            report = quota(server)
            assert report["cpu"] == {"limit": 3, "used": 1, "default": False}
            assert report["sandboxes"]["used"] == 2 and report["diskMb"]["used"] == 2 * 256
            create_sandbox(client, name="q3", cpu=2)
            # Starting the stopped one would need 2 more CPUs.
            refused(client.post(f"/sandboxes/{first['id']}/start"), "CPUs")
            refused(client.post("/sandboxes", json={"name": "q4"}), "sandboxes")
            quota(server, "--disk-mb", str(3 * 256))
            quota(server, "--max-sandboxes", "10", "--cpu", "10")
            refused(client.post("/sandboxes", json={"name": "q4"}), "disk")
            # Deleting frees everything.
            assert client.delete(f"/sandboxes/{first['id']}").status_code == 200
            create_sandbox(client, name="q4")
            report = quota(server, "--reset")
            assert all(row["default"] for row in report.values())
            assert report["sandboxes"]["limit"] == 100
    finally:
        quota(server, "--reset")


def test_concurrent_creates_do_not_overshoot(server: ServerProcess) -> None:
    with server.client() as client:
        before = len(client.get("/sandboxes", params={"limit": 100}).json()["data"])
    quota(server, "--max-sandboxes", str(before + 2))
    try:

        def create(i: int) -> int:
            with server.client() as client:
                body = {"name": f"race-{i}", "sync": False}
                return client.post("/sandboxes", json=body).status_code

        with ThreadPoolExecutor(6) as pool:
            statuses = sorted(pool.map(create, range(6)))
        assert statuses == [201, 201, 403, 403, 403, 403]
        assert quota(server)["sandboxes"]["used"] == before + 2
    finally:
        quota(server, "--reset")


def sandbox_dirs(server: ServerProcess) -> set[str]:
    return {p.name for p in (server.data_dir / "sandboxes").iterdir() if len(p.name) == 24}


def settled_dirs(server: ServerProcess) -> set[str]:
    """The sandbox directories once they stop changing (the warm pool refills)."""
    seen, stable_since = sandbox_dirs(server), time.monotonic()
    while time.monotonic() - stable_since < 1.5:
        time.sleep(0.1)
        now = sandbox_dirs(server)
        if now != seen:
            seen, stable_since = now, time.monotonic()
    return seen


def test_an_org_over_quota_makes_the_host_boot_nothing(server: ServerProcess) -> None:
    """A create may boot before its quota check answers (services/speculation.py); an org
    refused once is not guessed for, so a client hammering past its quota costs no boots."""
    with server.client() as client:
        create_sandbox(client, name="warm-the-guess")  # the image name is now known
        used = quota(server)["sandboxes"]["used"]
        quota(server, "--max-sandboxes", str(used))
        try:
            refused(client.post("/sandboxes", json={"name": "over"}), "sandboxes")
            before = settled_dirs(server)
            for i in range(5):
                refused(client.post("/sandboxes", json={"name": f"over-{i}"}), "sandboxes")
            assert sandbox_dirs(server) == before
            assert quota(server)["sandboxes"]["used"] == used
        finally:
            quota(server, "--reset")


def free_mib(path: str) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize // MIB


def test_sparse_disks_never_overcommit_the_free_space_floor() -> None:
    disk = 2048
    with sandbox_server(VOIDRUN_SANDBOX_DISK_MB=str(disk)) as server:
        # Leave room for two new disks of 2 GiB but not three (1 GiB slack either way).
        floor = free_mib(str(server.data_dir)) - disk * 5 // 2
        server.stop()
        server.extra_env["VOIDRUN_MIN_FREE_DISK_MB"] = str(floor)
        server.start()
        with server.client() as client:
            create_sandbox(client, name="d1")
            create_sandbox(client, name="d2")
            body = assert_error(client.post("/sandboxes", json={"name": "d3"}), 507)
            assert "VOIDRUN_MIN_FREE_DISK_MB" in str(body["details"])


def test_below_the_floor_creates_and_uploads_are_507() -> None:
    with sandbox_server() as server:
        with server.client() as client:
            box = create_sandbox(client, name="floor")["id"]
        server.stop()
        server.extra_env["VOIDRUN_MIN_FREE_DISK_MB"] = str(free_mib(str(server.data_dir)) * 2)
        server.start()
        with server.client() as client:
            body = assert_error(client.post("/sandboxes", json={"name": "more"}), 507)
            assert body["error"] == "Insufficient storage on the server"
            # the refused create's transaction rolled back: the next create must not trip on
            # what it had loaded (it was once remembered for guessing, and expired: a 500)
            again = assert_error(client.post("/sandboxes", json={"name": "more"}), 507)
            assert again["error"] == "Insufficient storage on the server"
            upload = client.post(
                f"/sandboxes/{box}/files/upload", params={"path": "/root/f"}, content=b"x" * 1000
            )
            assert "below the floor" in str(assert_error(upload, 507)["details"])
            # Reads still work.
            assert (
                client.get(f"/sandboxes/{box}/files", params={"path": "/root"}).status_code == 200
            )
