"""A fleet when things go wrong: two replicas racing for one node's last room, a node killed
with SIGKILL (suspect, no placements, 503s, lost, its sandboxes error, restart without
orphans) and a replica killed with SIGKILL (the other serves every row)."""

from __future__ import annotations

import glob
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fleet import HEARTBEAT, Fleet, NodeProcess, sql
from tests.support.server import free_port

pytestmark = pytest.mark.fleet
NODE_ENV = {"n3": {"VOIDRUN_NODE_MAX_SANDBOXES": "4"}}


def data(response: httpx.Response) -> Any:
    assert response.status_code in (200, 201), response.text
    return response.json()["data"]


def node_row(fleet: Fleet, node_id: str) -> dict[str, Any]:
    return next(r for r in fleet.node_rows() if r["id"] == node_id)


def wait_for_state(fleet: Fleet, node_id: str, state: str) -> None:
    for _ in range(600):  # bounded by count, not by a time limit
        if node_row(fleet, node_id)["state"] == state:
            return
        time.sleep(HEARTBEAT / 2)
    raise AssertionError(f"node {node_id} never became {state}")


def holder(fleet: Fleet, sandbox_id: str) -> NodeProcess | None:
    return next((n for n in fleet.nodes if (n.state_dir / sandbox_id).exists()), None)


def traces(sandbox_id: str) -> list[str]:
    """What the host still has of a sandbox: processes in its cgroup, mounts, cgroups."""
    found = [p for p in glob.glob("/sys/fs/cgroup/**/", recursive=True) if sandbox_id in p]
    if sandbox_id in Path("/proc/self/mountinfo").read_text():
        found.append("mount")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if sandbox_id in Path(f"/proc/{pid}/cgroup").read_text():
                found.append(f"pid {pid}")
        except OSError:
            continue
    return found


def create(replica: Any, name: str) -> httpx.Response:
    with replica.client() as client:
        return client.post("/sandboxes", json={"name": name})


def test_two_replicas_racing_never_overcommit_a_node(fleet: Fleet) -> None:
    for other in ("n1", "n2"):
        assert fleet.replicas[0].cli("nodes", "drain", other).returncode == 0
    try:
        with ThreadPoolExecutor(10) as pool:
            answers = list(
                pool.map(lambda i: create(fleet.replicas[i % 2], f"race-{i}"), range(10))
            )
        made = [r.json()["data"]["id"] for r in answers if r.status_code == 201]
        refused = [r for r in answers if r.status_code != 201]
        assert len(made) == 4, [r.text for r in refused]  # n3 holds 4
        assert all(r.status_code == 503 for r in refused), [
            (r.status_code, r.text) for r in refused
        ]
        assert all(holder(fleet, box) is fleet.nodes[2] for box in made)
        assert node_row(fleet, "n3")["sandboxes"] == 4
    finally:
        for other in ("n1", "n2"):
            assert fleet.replicas[0].cli("nodes", "ready", other).returncode == 0
    with fleet.replicas[1].client() as client:
        for box in made:
            assert client.delete(f"/sandboxes/{box}").status_code == 200


def test_killed_node_turns_suspect_then_lost_and_restarts_clean(fleet: Fleet) -> None:
    a, b = fleet.replicas
    boxes = [data(create(fleet.replicas[i % 2], f"k-{i}"))["id"] for i in range(6)]
    victim = fleet.nodes[0]
    mine = [box for box in boxes if holder(fleet, box) is victim]
    others = [box for box in boxes if box not in mine]
    assert mine and others
    epoch = node_row(fleet, victim.node_id)["epoch"]
    assert victim.process is not None
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait()

    wait_for_state(fleet, victim.node_id, "suspect")
    for replica in (a, b):  # one of them holds a cached agent connection, the other not
        with replica.client() as client:
            for box in mine:
                answer = client.post(f"/sandboxes/{box}/exec", json={"command": "true"})
                assert answer.status_code == 503, answer.text
                assert "suspect" in answer.text or "lost" in answer.text
    with a.client() as client:
        placed = [data(create(b, f"after-{i}"))["id"] for i in range(4)]
        assert all(holder(fleet, box) is not victim for box in placed)
        for box in others:
            data(client.post(f"/sandboxes/{box}/exec", json={"command": "true"}))

    wait_for_state(fleet, victim.node_id, "lost")
    with b.client() as client:
        for _ in range(100):  # the replica that ran the pass marked them in the same transaction
            statuses = {data(client.get(f"/sandboxes/{box}"))["status"] for box in mine}
            if statuses == {"error"}:
                break
            time.sleep(HEARTBEAT)
        assert statuses == {"error"}
        for box in others + placed:
            assert data(client.get(f"/sandboxes/{box}"))["status"] == "running"
            data(client.post(f"/sandboxes/{box}/exec", json={"command": "true"}))

    # its sandboxes outlived the SIGKILL; the restart (new epoch) destroys them
    assert all(traces(box) for box in mine)
    victim.start()
    assert node_row(fleet, victim.node_id)["epoch"] == epoch + 1
    assert node_row(fleet, victim.node_id)["state"] == "ready"
    for box in mine:
        assert not (victim.state_dir / box).exists()
        assert traces(box) == []
    with a.client() as client:
        for box in mine + others + placed:
            assert client.delete(f"/sandboxes/{box}").status_code == 200


def test_a_node_that_cannot_be_reached_is_skipped(fleet: Fleet) -> None:
    """A registered, heartbeating node whose URL answers nothing: creates placed there are
    retried on the next node and succeed; nothing stays placed on it."""
    dead = free_port()
    sql(
        fleet.database_url,
        "INSERT INTO nodes (id, url, tunnel, cpu, mem_mb, disk_mb, max_sandboxes, committed_cpu,"
        " committed_mem_mb, sandbox_count, labels, state, last_heartbeat, epoch, started_at,"
        " images)"  # it claims the images n1 holds (placement only picks holders)
        " VALUES ('ghost', $1, $2, 100000, 100000000, 1000000, 100000, 0, 0, 0, '{}', 'ready',"
        " now(), 1, now(), (SELECT images FROM nodes WHERE id = 'n1'))",
        f"http://127.0.0.1:{dead}",
        f"127.0.0.1:{dead}",
    )
    stop = threading.Event()

    def beat() -> None:  # a heartbeat the failure detector sees: it stays ready
        while not stop.wait(HEARTBEAT / 2):
            sql(fleet.database_url, "UPDATE nodes SET last_heartbeat = now() WHERE id = 'ghost'")

    beating = threading.Thread(target=beat)
    beating.start()
    try:
        boxes = [data(create(fleet.replicas[i % 2], f"ghost-{i}"))["id"] for i in range(6)]
    finally:
        stop.set()
        beating.join()
        sql(fleet.database_url, "DELETE FROM nodes WHERE id = 'ghost'")
    tried = sql(fleet.database_url, "SELECT status FROM sandboxes WHERE node_id = 'ghost'")
    assert tried and {row["status"] for row in tried} == {"deleted"}  # it was picked, then skipped
    assert all(holder(fleet, box) is not None for box in boxes)
    with fleet.replicas[0].client() as client:
        for box in boxes:
            assert client.delete(f"/sandboxes/{box}").status_code == 200


def test_killed_replica_leaves_the_other_serving_every_row(fleet: Fleet) -> None:
    survivor, victim = fleet.replicas
    boxes = [data(create(victim, f"r-{i}"))["id"] for i in range(4)]
    assert victim.process is not None
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait()
    victim.process = None
    with survivor.client() as client:
        listed = {box["id"] for box in data(client.get("/sandboxes", params={"limit": 100}))}
        assert set(boxes) <= listed
        for box in boxes:
            out = data(client.post(f"/sandboxes/{box}/exec", json={"command": "echo ok"}))
            assert "ok" in out["stdout"]
        new = data(client.post("/sandboxes", json={"name": "after-replica"}))["id"]
        for box in [*boxes, new]:
            assert client.delete(f"/sandboxes/{box}").status_code == 200
