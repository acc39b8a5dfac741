"""A fleet on one machine: two API replicas and three node daemons on one PostgreSQL.

Placement, routing of the data plane through either replica to the sandbox's node, and the
node table's CLI. Failure handling (kill -9) is in ``test_failures.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import re
import shutil
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.support.fleet import Fleet, NodeProcess, sql
from tests.support.server import ServerProcess
from voidrun_server.services.locks import advisory_key

pytestmark = pytest.mark.fleet


def data(response: httpx.Response) -> Any:
    assert response.status_code in (200, 201), response.text
    return response.json()["data"]


def test_create_exec_delete_through_either_replica(fleet: Fleet) -> None:
    first, second = fleet.replicas
    with first.client() as a, second.client() as b:
        box = data(a.post("/sandboxes", json={"name": "fleet-one"}))
        assert "nodeId" not in box  # VOIDRUN_EMIT_NODE_ID is off
        ran = b.post(f"/sandboxes/{box['id']}/exec", json={"command": "echo hi-$((6*7))"})
        assert "hi-42" in ran.text
        holder = next(n for n in fleet.nodes if (n.state_dir / box["id"]).exists())
        assert b.delete(f"/sandboxes/{box['id']}").status_code == 200
        assert data(a.get(f"/sandboxes/{box['id']}"))["status"] == "deleted"
        assert not (holder.state_dir / box["id"]).exists()  # destroyed on its node


def _holder(fleet: Fleet, sandbox_id: str) -> NodeProcess:
    return next(n for n in fleet.nodes if (n.state_dir / sandbox_id).exists())


def _create_many(fleet: Fleet, count: int, prefix: str) -> list[str]:
    """``count`` creates, alternating replicas, four at a time."""

    def one(i: int) -> str:
        replica = fleet.replicas[i % 2]
        with replica.client() as client:
            return str(data(client.post("/sandboxes", json={"name": f"{prefix}-{i}"}))["id"])

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(count)))


def test_thirty_sandboxes_spread_over_three_nodes(fleet: Fleet) -> None:
    boxes = _create_many(fleet, 30, "spread")
    holders = {box: _holder(fleet, box) for box in boxes}
    per_node = Counter(node.node_id for node in holders.values())
    assert set(per_node) == {"n1", "n2", "n3"}
    assert min(per_node.values()) >= 5, per_node  # least loaded of the sampled nodes first
    rows = {str(r["id"]): r for r in fleet.node_rows()}
    assert {k: rows[k]["sandboxes"] for k in per_node} == dict(per_node)
    table = fleet.replicas[1].cli("nodes", "list")
    assert table.returncode == 0
    for node_id, count in per_node.items():
        line = next(x for x in table.stdout.splitlines() if f" {node_id} " in x)
        assert "ready" in line and f"{count}/" in line, table.stdout
    # each sandbox answers through the other replica from its own node's subnet
    for i, box in enumerate(boxes[:6]):
        with fleet.replicas[(i + 1) % 2].client() as client:
            out = data(client.post(f"/sandboxes/{box}/exec", json={"command": "hostname -I"}))
        subnet = ipaddress.ip_network(holders[box].sandbox_subnet)
        assert ipaddress.ip_address(out["stdout"].split()[0]) in subnet, out
    with fleet.replicas[0].client() as client:
        for box in boxes:
            assert client.delete(f"/sandboxes/{box}").status_code == 200
    assert all(not (holders[box].state_dir / box).exists() for box in boxes)


def ws_url(replica: ServerProcess, path: str) -> str:
    return f"ws://127.0.0.1:{replica.port}/api{path}?apiKey={replica.api_key}"


def read_until(ws: ClientConnection, pattern: str, seen: list[str]) -> str:
    for _ in range(2000):
        text = "".join(seen)
        if re.search(pattern, text):
            return text
        frame = ws.recv(timeout=30)
        seen.append(frame if isinstance(frame, str) else frame.decode())
    raise AssertionError(f"never saw {pattern!r} in {''.join(seen)!r}")


@pytest.mark.parametrize("via", [0, 1], ids=["replica-a", "replica-b"])
def test_streams_reach_the_node_through_either_replica(fleet: Fleet, via: int) -> None:
    replica, other = fleet.replicas[via], fleet.replicas[1 - via]
    with other.client() as client:
        box = str(data(client.post("/sandboxes", json={"name": f"streams-{via}"}))["id"])
    with replica.client() as client:
        # exec-stream (SSE): lines as produced, then the exit event
        with client.stream(
            "POST",
            f"/sandboxes/{box}/exec-stream",
            json={"command": "for i in 1 2 3; do echo l$i; done"},
        ) as events:
            body = "".join(events.iter_text())
        assert all(f"l{i}" in body for i in (1, 2, 3)) and "exit" in body, body
        # PTY (WebSocket)
        seen: list[str] = []
        with connect(ws_url(replica, f"/sandboxes/{box}/pty")) as ws:
            ws.send("echo pty-$((6 * 7))\n")
            read_until(ws, r"pty-42", seen)
        # watch: started and streamed on this replica, the change made through the other
        session = data(client.post(f"/sandboxes/{box}/files/watch", json={"path": "/root"}))
        url = ws_url(replica, f"/sandboxes/{box}/files/watch/{session['sessionId']}/stream")
        with connect(url) as ws, other.client() as writer:
            data(writer.post(f"/sandboxes/{box}/exec", json={"command": "touch /root/seen-me"}))
            seen = []
            read_until(ws, "seen-me", seen)
        assert client.delete(f"/sandboxes/{box}").status_code == 200


def ws_refused(url: str) -> int:
    """The HTTP status that refused a WebSocket before the upgrade."""
    try:
        with connect(url, open_timeout=10, close_timeout=2):
            pass
    except InvalidStatus as exc:
        return exc.response.status_code
    raise AssertionError(f"{url} opened")


def test_watch_ticket_from_one_replica_is_taken_on_the_other_once(fleet: Fleet) -> None:
    """No sticky sessions: the ticket lives in the database; single-use across replicas;
    another org's caller gets 404 and does not use the ticket up."""
    first, second = fleet.replicas
    intruder_key = first.new_tenant("watch-intruders")
    with first.client() as a:
        box = str(data(a.post("/sandboxes", json={"name": "watch-shared"}))["id"])
        ticket = data(a.post(f"/sandboxes/{box}/files/watch", json={"path": "/root"}))
    path = f"/sandboxes/{box}/files/watch/{ticket['sessionId']}/stream"
    intruder = f"ws://127.0.0.1:{second.port}/api{path}?apiKey={intruder_key}"
    assert ws_refused(intruder) == 404
    with connect(ws_url(second, path)) as ws, first.client() as writer:
        data(writer.post(f"/sandboxes/{box}/exec", json={"command": "touch /root/across"}))
        read_until(ws, "across", [])
        # taken: neither replica hands it out again, even while the first stream is open
        assert ws_refused(ws_url(first, path)) == 404
        assert ws_refused(ws_url(second, path)) == 404
    with first.client() as a:
        assert a.delete(f"/sandboxes/{box}").status_code == 200


def test_100mb_upload_and_download_through_different_replicas(fleet: Fleet) -> None:
    size, chunk = 100 * 2**20, 2**20
    sent = hashlib.sha256()

    def body() -> Iterator[bytes]:
        block = hashlib.sha256(b"fleet").digest() * (chunk // 32)
        for i in range(size // chunk):
            piece = i.to_bytes(4, "big") + block[4:]
            sent.update(piece)
            yield piece

    a, b = fleet.replicas
    with a.client() as up, b.client() as down:
        box = str(data(up.post("/sandboxes", json={"name": "big"}))["id"])
        uploaded = up.post(
            f"/sandboxes/{box}/files/upload",
            params={"path": "/root/big.bin"},
            content=body(),
            timeout=300,
        )
        assert uploaded.status_code in (200, 201), uploaded.text
        got = hashlib.sha256()
        length = 0
        with down.stream(
            "GET", f"/sandboxes/{box}/files/download", params={"path": "/root/big.bin"}, timeout=300
        ) as response:
            assert response.status_code == 200
            for piece in response.iter_bytes():
                got.update(piece)
                length += len(piece)
        assert (length, got.hexdigest()) == (size, sent.hexdigest())
        up.delete(f"/sandboxes/{box}")


def test_official_sdk_flow_through_a_replica(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    from voidrun import VoidRun

    replica = fleet.replicas[1]
    monkeypatch.setenv("VR_API_URL", replica.api)
    monkeypatch.setenv("VR_API_KEY", replica.api_key)
    vr = VoidRun()
    box = vr.create_sandbox(name="sdk-fleet", env_vars={"GREETING": "hi"})
    try:
        assert box.node_id is None  # never emitted by default: the SDK would re-route
        assert box.exec("echo $GREETING").data.stdout == "hi\n"
        box.fs.upload_file("/root/a.txt", "fleet\n")
        assert box.fs.download_file("/root/a.txt") == b"fleet\n"
        assert "a.txt" in {f.name for f in box.fs.list_files("/root").data}
        assert vr.get_sandbox(box.id).status == "running"
        assert box.id in {s.id for s in vr.list_sandboxes().sandboxes}
    finally:
        vr.remove_sandbox(box.id)
    assert vr.get_sandbox(box.id).status == "deleted"


def test_internal_api_and_tunnel_refuse_strangers(fleet: Fleet) -> None:
    node = fleet.nodes[0]
    replica = fleet.replicas[0]
    internal = f"{node.url}/internal/v1/sandboxes/{'0' * 24}"
    assert httpx.get(internal).status_code == 401
    assert httpx.get(internal, headers={"X-API-Key": replica.api_key}).status_code == 401
    wrong = {"X-VoidRun-Node-Token": "x" + fleet.token}
    assert httpx.get(internal, headers=wrong).status_code == 401
    assert httpx.get(f"{node.url}/api/sandboxes").status_code == 404  # no public API on a node
    right = {"X-VoidRun-Node-Token": fleet.token}
    assert httpx.get(internal, headers=right).json()["state"] == "gone"

    def hello(payload: bytes, *, close: bool = False) -> bytes:
        with socket.create_connection(("127.0.0.1", node.tunnel_port), timeout=30) as sock:
            sock.sendall(payload)
            if close:
                sock.shutdown(socket.SHUT_WR)
            return sock.recv(4096)

    box = "0" * 24
    assert hello(f"VRTUNNEL 1 nope {box} agent\n".encode()).startswith(b"ERR auth")
    assert hello(f"VRTUNNEL 1 {fleet.token} {box} agent\n".encode()).startswith(b"ERR notfound")
    assert hello(b"GET / HTTP/1.1\r\n\r\n").startswith(b"ERR bad")
    assert hello(b"x" * 100_000).startswith(b"ERR bad")  # too long: refused, not buffered
    assert hello(b"VRTUNNEL 1", close=True) == b""  # half a hello, then EOF: just closed
    # a silent client is cut off by the hello deadline (recv returns once the node closes)
    with socket.create_connection(("127.0.0.1", node.tunnel_port), timeout=60) as sock:
        assert sock.recv(4096).startswith(b"ERR bad")
    # and the node still serves its sandboxes afterwards
    with replica.client() as client:
        made = data(client.post("/sandboxes", json={"name": "after-strangers"}))
        out = data(client.post(f"/sandboxes/{made['id']}/exec", json={"command": "echo ok"}))
        assert out["stdout"] == "ok\n"
        assert client.delete(f"/sandboxes/{made['id']}").status_code == 200


def test_emit_node_id_and_host_prefix_routing(fleet: Fleet) -> None:
    replica = fleet.add_replica(VOIDRUN_EMIT_NODE_ID="true")
    try:
        with replica.client() as client:
            box = data(client.post("/sandboxes", json={"name": "emitted"}))
            assert box["nodeId"] == _holder(fleet, box["id"]).node_id
            # what the SDK then calls: <nodeId>-<host>, served by any replica
            host = {"Host": f"{box['nodeId']}-localhost:{replica.port}"}
            got = data(client.get(f"/sandboxes/{box['id']}", headers=host))
            assert got["nodeId"] == box["nodeId"]
            ran = client.post(
                f"/sandboxes/{box['id']}/exec", json={"command": "echo routed"}, headers=host
            )
            assert data(ran)["stdout"] == "routed\n"
            assert client.delete(f"/sandboxes/{box['id']}", headers=host).status_code == 200
    finally:
        replica.stop()
        fleet.replicas.remove(replica)
        shutil.rmtree(replica.data_dir, ignore_errors=True)


def test_port_preview_through_the_tunnel_and_snapshots_refused(fleet: Fleet) -> None:
    a, b = fleet.replicas
    with a.client() as client:
        box = data(
            client.post(
                "/sandboxes",
                json={
                    "name": "preview",
                    "ports": [{"protocol": "http", "port": p} for p in (8000, 8001)],
                },
            )
        )["id"]
        data(client.post(f"/sandboxes/{box}/exec", json={"command": "echo page > /root/p.txt"}))
        command = "cd /root && exec python3 -m http.server 8000 --bind 127.0.0.1"
        assert client.post(f"/sandboxes/{box}/commands/run", json={"command": command}).is_success
    with b.client() as client:
        for _ in range(300):  # until the server in the sandbox listens (502 before)
            page = client.get(f"/sandboxes/{box}/ports/8000/p.txt")
            if page.status_code != 502:
                break
            time.sleep(0.05)
        assert (page.status_code, page.text) == (200, "page\n")
        assert client.get(f"/sandboxes/{box}/ports/8001/").status_code == 502  # nothing there
        refused = client.post(f"/sandboxes/{box}/snapshot", json={"name": "snap"})
        assert refused.status_code == 400 and "node" in refused.text, refused.text
        assert client.delete(f"/sandboxes/{box}").status_code == 200


def test_lifecycle_verbs_through_different_replicas(fleet: Fleet) -> None:
    a, b = fleet.replicas
    with a.client() as ca, b.client() as cb:
        box = data(ca.post("/sandboxes", json={"name": "verbs"}))["id"]
        data(ca.post(f"/sandboxes/{box}/exec", json={"command": "echo kept > /root/k"}))
        assert ca.post(f"/sandboxes/{box}/pause").status_code == 200
        assert data(cb.get(f"/sandboxes/{box}"))["status"] == "paused"
        # a data-plane call through the other replica wakes it on its node
        out = data(cb.post(f"/sandboxes/{box}/exec", json={"command": "cat /root/k"}))
        assert out["stdout"] == "kept\n"
        assert cb.post(f"/sandboxes/{box}/stop").status_code == 200
        assert data(ca.get(f"/sandboxes/{box}"))["status"] == "stopped"
        assert ca.post(f"/sandboxes/{box}/start").status_code == 200
        out = data(cb.post(f"/sandboxes/{box}/exec", json={"command": "cat /root/k"}))
        assert out["stdout"] == "kept\n"  # its disk stayed on its node
        assert cb.delete(f"/sandboxes/{box}").status_code == 200


def test_a_replicas_cached_row_follows_changes_made_through_the_other(fleet: Fleet) -> None:
    """A replica serves execs from the row it read last while the database still holds it
    (services/row_versions.py): a pause, a delete through the other replica is seen at once."""
    a, b = fleet.replicas
    with a.client() as ca, b.client() as cb:
        box = data(ca.post("/sandboxes", json={"name": "cached"}))["id"]
        for _ in range(3):  # b reads the row, then serves it from memory
            assert (
                data(cb.post(f"/sandboxes/{box}/exec", json={"command": "true"}))["exitCode"] == 0
            )
        assert ca.post(f"/sandboxes/{box}/pause").status_code == 200
        woke = data(cb.post(f"/sandboxes/{box}/exec", json={"command": "echo up"}))
        assert woke["stdout"] == "up\n"  # b saw the pause and resumed it on its node
        assert data(ca.get(f"/sandboxes/{box}"))["status"] == "running"
        assert data(cb.post(f"/sandboxes/{box}/exec", json={"command": "true"}))["exitCode"] == 0
        assert ca.delete(f"/sandboxes/{box}").status_code == 200
        gone = cb.post(f"/sandboxes/{box}/exec", json={"command": "true"})
        assert gone.status_code in (404, 409), gone.text


def hold_advisory_lock(
    database_url: str, key: int, taken: threading.Event, release: threading.Event
) -> None:
    """Take a session-level advisory lock on its own connection until ``release`` is set."""
    import asyncpg  # type: ignore[import-untyped]

    async def run() -> None:
        conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", key)
            taken.set()
            await asyncio.get_running_loop().run_in_executor(None, release.wait)
            await conn.execute("SELECT pg_advisory_unlock($1)", key)
        finally:
            await conn.close()

    asyncio.run(run())


def test_a_verb_waits_for_the_sandboxs_lock_held_elsewhere(fleet: Fleet) -> None:
    """A pause through a replica waits while the sandbox's advisory lock is held by another
    connection (as another replica's verb holds it); the data plane does not wait."""
    first, second = fleet.replicas
    with first.client() as a, second.client() as b:
        box = str(data(a.post("/sandboxes", json={"name": "locked-verbs"}))["id"])
        taken, release = threading.Event(), threading.Event()
        holder = threading.Thread(
            target=hold_advisory_lock,
            args=(fleet.database_url, advisory_key(box), taken, release),
        )
        holder.start()
        try:
            assert taken.wait(30)
            with ThreadPoolExecutor(1) as pool:
                paused = pool.submit(a.post, f"/sandboxes/{box}/pause")
                waiting = (
                    "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                )
                for _ in range(600):  # bounded by count: the replica's wait shows in pg_locks
                    if sql(fleet.database_url, waiting)[0]["n"] > 0:
                        break
                    time.sleep(0.05)
                else:
                    raise AssertionError("the pause never waited for the sandbox's lock")
                assert not paused.done()
                out = data(b.post(f"/sandboxes/{box}/exec", json={"command": "echo free"}))
                assert out["stdout"] == "free\n"  # the data plane takes no lifecycle lock
                release.set()
                assert paused.result().status_code == 200
        finally:
            release.set()
            holder.join()
        assert data(b.get(f"/sandboxes/{box}"))["status"] == "paused"
        assert b.delete(f"/sandboxes/{box}").status_code == 200


def test_pause_and_delete_racing_through_two_replicas_are_serialised(fleet: Fleet) -> None:
    """The sandbox's advisory lock (PostgreSQL) orders verbs of two replicas: whichever runs
    second sees the first's outcome, so the delete always wins in the end, the pause never
    fails on a sandbox destroyed under it, and nothing stays on the node."""
    first, second = fleet.replicas
    with first.client() as a, second.client() as b:
        for round_ in range(6):
            box = str(data(a.post("/sandboxes", json={"name": f"race-{round_}"}))["id"])
            holder = _holder(fleet, box)
            with ThreadPoolExecutor(2) as pool:
                paused = pool.submit(a.post, f"/sandboxes/{box}/pause")
                deleted = pool.submit(b.delete, f"/sandboxes/{box}")
                pause, delete = paused.result(), deleted.result()
            assert delete.status_code == 200, delete.text
            assert pause.status_code < 500, pause.text
            assert data(a.get(f"/sandboxes/{box}"))["status"] == "deleted"
            assert not (holder.state_dir / box).exists()
