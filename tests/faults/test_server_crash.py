"""The server is SIGKILLed mid-operation and restarted: nothing is lost, nothing leaks."""

from __future__ import annotations

import glob
import json
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.sandboxes import create_sandbox, sandbox_server
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(900)]
LIVE = {"running", "paused", "stopped"}


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    with sandbox_server(VOIDRUN_AUTO_SLEEP_CHECK_INTERVAL_SECONDS="3600") as proc:
        yield proc


POOL_HOSTNAME = "sandbox"  # a warm-pool sandbox's hostname until it is handed out
POOL_SIZE = 2  # VOIDRUN_WARM_POOL_SIZE's default


def unowned_dirs(server: ServerProcess, rows: set[str]) -> dict[str, str]:
    """Sandbox directories without a row -> the hostname in their record."""
    state_dir = server.data_dir / "sandboxes"
    found = {}
    for entry in state_dir.iterdir() if state_dir.exists() else []:
        if entry.name.startswith(".") or not entry.is_dir() or entry.name in rows:
            continue
        try:
            found[entry.name] = json.loads((entry / "state.json").read_text())["hostname"]
        except (OSError, ValueError, KeyError):
            found[entry.name] = ""
    return found


def crash_and_restart(server: ServerProcess) -> None:
    """SIGKILL at once and start again; the warm pool's sandboxes of before must not survive
    (they have no row: the start-up reconcile destroys them like any orphan). The rows are
    read from the dead server's database, so nothing runs between the caller and the kill."""
    assert not server.database_url, "these tests read the SQLite database of a killed server"
    server.stop(signal.SIGKILL)
    with sqlite3.connect(server.data_dir / "voidrun.db") as db:
        rows = {r[0] for r in db.execute("SELECT id FROM sandboxes WHERE status != 'deleted'")}
    server.old_pool = set(unowned_dirs(server, rows))  # type: ignore[attr-defined]
    server.start()


def mounts_under(path: Path) -> list[str]:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line.split()[4] for line in lines if line.split()[4].startswith(str(path))]


def cgroups_of(sandbox_id: str) -> list[Path]:
    """The sandbox's cgroup directories in any hierarchy (v1 controllers or v2), below any
    server's cgroup parent (tests give each server its own: tests/support/server.py)."""
    return [Path(p) for p in glob.glob(f"/sys/fs/cgroup/**/voidrun*/{sandbox_id}", recursive=True)]


def assert_consistent(server: ServerProcess, client: httpx.Client) -> list[dict[str, object]]:
    """Rows match reality: live rows answer, dead rows hold no processes or mounts, and no
    sandbox directory exists without a row that may own it."""
    rows = client.get("/sandboxes", params={"limit": 100}).json()["data"]
    by_id = {row["id"]: row for row in rows}
    state_dir = server.data_dir / "sandboxes"
    unowned = unowned_dirs(server, set(by_id))
    for _ in range(200):  # a pool sandbox being created has no record yet: let it finish
        if all(unowned.values()):
            break
        time.sleep(0.05)
        unowned = unowned_dirs(server, set(by_id))
    old_pool = getattr(server, "old_pool", set())
    assert not set(unowned) & old_pool, "a warm-pool sandbox survived the crash"
    # only the new warm pool may have directories without rows
    assert set(unowned.values()) <= {POOL_HOSTNAME}, f"orphan sandbox dirs {unowned}"
    assert len(unowned) <= POOL_SIZE, f"orphan sandbox dirs {unowned}"
    for row in rows:
        if row["status"] == "running":
            result = client.post(f"/sandboxes/{row['id']}/exec", json={"command": "echo ok"})
            assert result.json()["data"]["stdout"] == "ok\n", row
        if row["status"] not in ("running", "paused"):
            assert not mounts_under(state_dir / str(row["id"])), row
            assert not cgroups_of(str(row["id"])), row
    for mount in mounts_under(state_dir):
        sandbox_id = Path(mount).relative_to(state_dir).parts[0]
        if sandbox_id not in by_id:  # a warm-pool sandbox (checked above, or made since)
            continue
        assert by_id.get(sandbox_id, {}).get("status") in ("running", "paused"), mount
    return list(rows)


def test_kill_during_creates(server: ServerProcess) -> None:
    with server.client() as client:
        survivor = str(create_sandbox(client, name="before", autoSleep=False)["id"])
        client.post(f"/sandboxes/{survivor}/exec", json={"command": "echo data > /root/f"})
    errors: list[httpx.HTTPError] = []
    answered: list[httpx.Response] = []

    def create(i: int) -> None:
        try:
            with server.client() as c:
                answered.append(c.post("/sandboxes", json={"name": f"racing-{i}"}, timeout=60))
        except httpx.HTTPError as exc:  # the server dies under it: expected
            errors.append(exc)

    def racing_dirs() -> int:
        names = {p.name for p in (server.data_dir / "sandboxes").iterdir()}
        return len({n for n in names if len(n) == 24} - {survivor})

    threads = [threading.Thread(target=create, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    # Creates in the driver: their run directory exists but their request has not been answered.
    deadline = time.monotonic() + 60
    while (in_flight := racing_dirs() - len(answered) - len(errors)) < 2:
        assert time.monotonic() < deadline, "creates never got into the driver"
        assert len(answered) + len(errors) < len(threads), "every create ended before the crash"
        time.sleep(0.005)
    crash_and_restart(server)
    for thread in threads:
        thread.join()
    # the creates the crash caught lost their connection; every answer that came is a success
    assert len(errors) >= in_flight, (errors, answered)
    for exc in errors:
        assert isinstance(exc, httpx.TransportError), repr(exc)
        assert not isinstance(exc, httpx.TimeoutException), repr(exc)
    assert all(r.status_code == 201 for r in answered), [r.text for r in answered]
    with server.client() as client:
        rows = assert_consistent(server, client)
        assert {r["id"]: r for r in rows}[survivor]["status"] == "running"
        kept = client.post(f"/sandboxes/{survivor}/exec", json={"command": "cat /root/f"})
        assert kept.json()["data"]["stdout"] == "data\n"
        for row in rows:
            assert client.delete(f"/sandboxes/{row['id']}").status_code == 200
            assert not cgroups_of(str(row["id"])), row
        pool = unowned_dirs(server, set())
        assert all(m.split("/")[-2] in pool for m in mounts_under(server.data_dir / "sandboxes"))


def test_kill_during_streamed_exec(server: ServerProcess) -> None:
    with server.client() as client:
        sid = str(create_sandbox(client, name="streaming", autoSleep=False)["id"])
        body = {"command": "echo started; exec sleep 4242"}
        with client.stream("POST", f"/sandboxes/{sid}/exec-stream", json=body) as response:
            for line in response.iter_lines():
                if line.startswith("data: started"):
                    break
            crash_and_restart(server)
    with server.client() as client:
        assert_consistent(server, client)
        for _ in range(100):
            probe = client.post(
                f"/sandboxes/{sid}/exec", json={"command": "pgrep -f '[s]leep 4242' || true"}
            )
            if probe.json()["data"]["stdout"] == "":
                break
            time.sleep(0.1)
        else:
            pytest.fail("the streamed command outlived the server's connection")


def test_restart_keeps_rows_and_files(server: ServerProcess) -> None:
    with server.client() as client:
        ids = [
            str(create_sandbox(client, name=f"keep-{i}", autoSleep=False)["id"]) for i in range(3)
        ]
        client.post(f"/sandboxes/{ids[1]}/pause")
        client.post(f"/sandboxes/{ids[2]}/stop")
        for sid in ids:
            client.post(f"/sandboxes/{sid}/exec", json={"command": f"echo {sid} > /root/id"})
    crash_and_restart(server)
    with server.client() as client:
        rows = {r["id"]: r for r in assert_consistent(server, client)}
        assert [rows[sid]["status"] for sid in ids] == ["running", "running", "running"]
        for sid in ids:
            out = client.post(f"/sandboxes/{sid}/exec", json={"command": "cat /root/id"})
            assert out.json()["data"]["stdout"] == f"{sid}\n"
        record = json.loads((server.data_dir / "sandboxes" / ids[0] / "state.json").read_text())
        assert record["sandbox_id"] == ids[0]


def test_kill_during_large_upload(server: ServerProcess) -> None:
    with server.client() as client:
        sid = str(create_sandbox(client, name="uploader", autoSleep=False)["id"])
        upload = f"/sandboxes/{sid}/files/upload"
        client.post(upload, params={"path": "/root/kept.bin"}, content=b"k" * 1_000_000)
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        block = os.urandom(1024 * 1024)
        for _ in range(200):  # 200 MiB, but the server dies part-way
            sent += len(block)
            if sent == 40 * 1024 * 1024:
                server.stop(signal.SIGKILL)
            yield block

    with server.client() as client, pytest.raises(httpx.HTTPError):
        client.post(upload, params={"path": "/root/big.bin"}, content=body())
    server.start()
    with server.client() as client:
        assert_consistent(server, client)
        listing = client.post(
            f"/sandboxes/{sid}/exec", json={"command": "ls -a /root; stat -c %s /root/kept.bin"}
        ).json()["data"]["stdout"]
        names = listing.split()
        assert "big.bin" not in names, "a half-written upload is visible at the target path"
        assert not [n for n in names if "big.bin" in n], f"temporary upload file left: {names}"
        assert names[-1] == "1000000"
