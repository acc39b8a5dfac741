"""With a warm pool, created sandboxes are pre-started ones made the caller's own."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.sandboxes import create_sandbox, sandbox_server
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with sandbox_server(VOIDRUN_WARM_POOL_SIZE="2") as proc:
        yield proc


def pooled_dirs(server: ServerProcess, client: httpx.Client) -> set[str]:
    rows = {b["id"] for b in client.get("/sandboxes", params={"limit": 100}).json()["data"]}
    on_disk = {p.name for p in (server.data_dir / "sandboxes").iterdir() if len(p.name) == 24}
    return on_disk - rows


def wait_for_pool(server: ServerProcess, client: httpx.Client, size: int) -> None:
    for _ in range(600):
        if len(pooled_dirs(server, client)) >= size:
            return
        time.sleep(0.05)
    pytest.fail("the warm pool did not fill")


def run(client: httpx.Client, sid: object, command: str) -> str:
    result = client.post(f"/sandboxes/{sid}/exec", json={"command": command})
    return str(result.json()["data"]["stdout"])


def test_pooled_sandbox_gets_the_callers_identity(server: ServerProcess) -> None:
    with server.client() as client:
        wait_for_pool(server, client, 2)
        pooled = pooled_dirs(server, client)
        box = create_sandbox(
            client, name="from-pool", cpu=2, mem=2048, envVars={"POOL_VAR": "mine"}
        )
        assert box["id"] in pooled, "the create did not use a warm sandbox"
        assert run(client, box["id"], "hostname; cat /etc/hostname") == "from-pool\nfrom-pool\n"
        assert "from-pool" in run(client, box["id"], "cat /etc/hosts")
        assert run(client, box["id"], "echo $POOL_VAR") == "mine\n"
        limit = run(client, box["id"], "cat /sys/fs/cgroup/memory.max 2>/dev/null || true")
        assert limit in ("", f"{2048 * 2**20}\n")
        # identity and environment survive a stop/start (they were written to the record)
        client.post(f"/sandboxes/{box['id']}/stop")
        client.post(f"/sandboxes/{box['id']}/start")
        assert run(client, box["id"], "hostname; echo $POOL_VAR") == "from-pool\nmine\n"
        wait_for_pool(server, client, 2)  # refilled
        listed = client.get("/sandboxes").json()["data"]
        newer = create_sandbox(client, name="second")
        assert [b["id"] for b in client.get("/sandboxes").json()["data"]][:2] == [
            newer["id"],
            listed[0]["id"],
        ]
        for sid in (box["id"], newer["id"]):
            client.delete(f"/sandboxes/{sid}")


def test_shutdown_destroys_the_pool(server: ServerProcess) -> None:
    with server.client() as client:
        wait_for_pool(server, client, 2)
    server.stop()
    leftovers = [p for p in (server.data_dir / "sandboxes").iterdir() if len(p.name) == 24]
    assert leftovers == []
    server.start()
