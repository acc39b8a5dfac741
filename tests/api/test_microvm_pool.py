"""The microvm isolation's warm pool through the HTTP API: a pre-started VM (a clone of the
default shape's template) is handed out with the caller's name and environment.

The driver shares the driver tests' cache (``VOIDRUN_MICROVM_CACHE_DIR``): the guest kernel,
the image's disk and the snapshot templates are built once per host, not per server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.drivers.microvm_harness import TEST_CACHE, qemu_missing
from tests.support.sandboxes import create_sandbox, sandbox_server, wait_for_isolation
from tests.support.server import ServerProcess
from tests.support.tiers import skip_if_opted_out, skip_tier

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    skip_if_opted_out("sandbox")
    reason = qemu_missing()
    if reason:
        skip_tier("sandbox", reason)
    env = {
        "VOIDRUN_ISOLATIONS": '["namespace", "microvm"]',
        "VOIDRUN_WARM_POOL_SIZE": "0",
        "VOIDRUN_WARM_POOL_SIZES": '{"microvm": 1}',
        "VOIDRUN_MICROVM_CACHE_DIR": str(TEST_CACHE),
    }
    with sandbox_server(**env) as proc:
        wait_for_isolation(proc, "microvm", seconds=300)
        yield proc


def pooled_vms(server: ServerProcess, client: httpx.Client) -> set[str]:
    """Running microvm sandboxes without a row (the pool's)."""
    rows = {b["id"] for b in client.get("/sandboxes", params={"limit": 100}).json()["data"]}
    found = set()
    root = server.data_dir / "microvm" / "sandboxes"
    for path in root.iterdir() if root.is_dir() else ():
        try:
            record = json.loads((path / "record.json").read_text())
        except (OSError, ValueError):
            continue  # still being created
        if path.name not in rows and record["phase"] == "running" and record["process"]:
            found.add(path.name)
    return found


def wait_for_pool(server: ServerProcess, client: httpx.Client) -> set[str]:
    """The pool's VMs once there is one (it is handed out only after the services' own first
    steps in it, which this cannot see: see :func:`create_from_pool`)."""
    deadline = time.monotonic() + 300  # the first fill may build the shape's template
    while time.monotonic() < deadline:
        found = pooled_vms(server, client)
        if found:
            return found
        time.sleep(0.2)
    pytest.fail("the microvm warm pool did not fill")


def create_from_pool(
    server: ServerProcess, client: httpx.Client, **body: object
) -> dict[str, object]:
    """A create that took the warm VM: one that came too early (the VM still being prepared
    by the services) booted its own and is deleted, and the create tried again."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pooled = wait_for_pool(server, client)
        box = create_sandbox(client, **body)
        if box["id"] in pooled:
            return box
        assert client.delete(f"/sandboxes/{box['id']}").status_code == 200
        time.sleep(1)
    pytest.fail("no create used the warm VM")


def run(client: httpx.Client, sid: object, command: str) -> str:
    result = client.post(f"/sandboxes/{sid}/exec", json={"command": command})
    assert result.status_code == 200, result.text
    return str(result.json()["data"]["stdout"])


def test_pooled_vm_gets_the_callers_identity(server: ServerProcess) -> None:
    with server.client() as client:
        box = create_from_pool(
            server, client, name="from-pool", isolation="microvm", envVars={"POOL_VAR": "mine"}
        )
        assert box["isolation"] == "microvm"
        out = run(client, box["id"], "hostname; cat /etc/hostname; echo $POOL_VAR")
        assert out == "from-pool\nfrom-pool\nmine\n"
        assert "from-pool" in run(client, box["id"], "cat /etc/hosts")
        assert run(client, box["id"], "uname -r").strip() != ""  # the guest's kernel answers
        assert wait_for_pool(server, client) - {box["id"]}  # refilled
        assert client.delete(f"/sandboxes/{box['id']}").status_code == 200
