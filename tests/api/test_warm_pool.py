"""With a warm pool, created sandboxes are pre-started ones made the caller's own."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.cgroups import read_limits, sandbox_cgroups
from tests.support.http import assert_error
from tests.support.sandboxes import create_sandbox, sandbox_server
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with sandbox_server(VOIDRUN_WARM_POOL_SIZE="2") as proc:
        yield proc


def pooled_dirs(server: ServerProcess, client: httpx.Client) -> set[str]:
    """Sandboxes on disk without a row whose driver record says running (a pool sandbox still
    being created has a directory before its cgroups and record)."""
    rows = {b["id"] for b in client.get("/sandboxes", params={"limit": 100}).json()["data"]}
    found = set()
    for path in (server.data_dir / "sandboxes").iterdir():
        if len(path.name) != 24 or path.name in rows:
            continue
        try:
            if json.loads((path / "state.json").read_text())["phase"] == "running":
                found.add(path.name)
        except (OSError, ValueError, KeyError):
            continue
    return found


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
        for sid in pooled:  # the pool's own limits differ from what the caller asks for
            before = read_limits(sandbox_cgroups(sid, server.cgroup_parent))
            assert (before.cpu_quota_us, before.mem_bytes) != (2 * 100_000, 2048 << 20)
        box = create_sandbox(
            client, name="from-pool", cpu=2, mem=2048, envVars={"POOL_VAR": "mine"}
        )
        assert box["id"] in pooled, "the create did not use a warm sandbox"
        assert run(client, box["id"], "hostname; cat /etc/hostname") == "from-pool\nfrom-pool\n"
        assert "from-pool" in run(client, box["id"], "cat /etc/hosts")
        assert run(client, box["id"], "echo $POOL_VAR") == "mine\n"
        # the kernel enforces the caller's limits (the sandbox has no /sys: check from the host)
        limits = read_limits(sandbox_cgroups(str(box["id"]), server.cgroup_parent))
        assert (limits.cpu_quota_us, limits.cpu_period_us) == (2 * 100_000, 100_000)
        assert limits.mem_bytes == 2048 << 20 and limits.no_swap
        # identity and environment survive a stop/start (they were written to the record)
        client.post(f"/sandboxes/{box['id']}/stop")
        client.post(f"/sandboxes/{box['id']}/start")
        assert run(client, box["id"], "hostname; echo $POOL_VAR") == "from-pool\nmine\n"
        restarted = read_limits(sandbox_cgroups(str(box["id"]), server.cgroup_parent))
        assert (restarted.cpu_quota_us, restarted.mem_bytes) == (2 * 100_000, 2048 << 20)
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


def test_refused_create_keeps_the_pool(server: ServerProcess) -> None:
    """A create the org's quota refuses takes nothing from the pool."""
    with server.client() as client:
        wait_for_pool(server, client, 2)
        pooled = pooled_dirs(server, client)
        result = server.cli("orgs", "quota", "default", "--max-sandboxes", "0")
        assert result.returncode == 0, result.stderr
        try:
            assert_error(client.post("/sandboxes", json={"name": "refused"}), 403)
        finally:
            server.cli("orgs", "quota", "default", "--max-sandboxes", "100")
        assert pooled_dirs(server, client) == pooled


def test_pool_is_on_by_default_and_yields_to_a_short_host() -> None:
    """Default settings fill a pool; a host under the memory floor gets no pool sandboxes, and
    creates still work (booted cold)."""
    with sandbox_server() as default, default.client() as client:
        wait_for_pool(default, client, 1)
    with sandbox_server(VOIDRUN_WARM_POOL_MIN_FREE_MEMORY_MB=str(1 << 40)) as short:
        with short.client() as client:
            box = create_sandbox(client, name="cold")
            assert run(client, box["id"], "hostname") == "cold\n"
            time.sleep(1.5)  # several refill checks
            assert pooled_dirs(short, client) == set()
            client.delete(f"/sandboxes/{box['id']}")


def test_pooled_sandbox_gets_the_callers_network_policy(server: ServerProcess) -> None:
    import hashlib
    import subprocess

    with server.client() as client:
        wait_for_pool(server, client, 2)
        pooled = pooled_dirs(server, client)
        box = create_sandbox(
            client, name="pool-net", network={"allowInternetAccess": False, "denyOut": ["1.2.3.4"]}
        )
        assert box["id"] in pooled, "the create did not use a warm sandbox"
        assert box["network"] == {
            "allowInternetAccess": False,
            "allowOut": [],
            "denyOut": ["1.2.3.4"],
        }
        state_dir = (server.data_dir / "sandboxes").resolve()
        table = "voidrun_" + hashlib.sha256(str(state_dir).encode()).hexdigest()[:6]
        chain = subprocess.run(
            ["nft", "list", "chain", "inet", table, f"sb_{box['id']}"],
            capture_output=True,
            text=True,
        ).stdout
        rules = [line.strip() for line in chain.splitlines() if line.startswith("\t\t")]
        assert rules[-2:] == [
            "ip daddr 1.2.3.4 reject with icmpx admin-prohibited",
            "reject with icmpx admin-prohibited",
        ], chain


def test_shutdown_during_a_refill_leaves_nothing_behind(server: ServerProcess) -> None:
    """Stopping the server while the pool is starting a replacement (cancelled mid-boot or
    mid-warm-up) destroys that sandbox too: only the caller's sandbox outlives the stop."""
    with server.client() as client:
        wait_for_pool(server, client, 2)
        box = str(create_sandbox(client, name="taken")["id"])  # the pool starts a refill now
        rows = {b["id"] for b in client.get("/sandboxes", params={"limit": 100}).json()["data"]}
    server.stop()
    leftovers = {p.name for p in (server.data_dir / "sandboxes").iterdir() if len(p.name) == 24}
    assert box in rows and leftovers <= rows  # the refill's destroy also removed its link
    server.start()
    with server.client() as client:
        client.delete(f"/sandboxes/{box}")
