"""Egress policies and previews on ``gvisor`` sandboxes, beside ``namespace`` ones on one server.

Both drivers share the server's one sandbox network (``drivers/netshare.py``): one nftables
table, one gateway bridge, one resolver. A gVisor sandbox's netstack sends through the veth of
the namespace the server made for it, so the host's rules judge its packets exactly as a
namespace sandbox's. Test traffic goes only to loopback and to the fake internet's namespace.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fakenet import WEB_NAME, ZONE, FakeInternet
from tests.support.sandboxes import create_sandbox, sandbox_server
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(600)]

PROBE = """
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        print(target, "open")
    except OSError as exc:
        print(target, "refused", type(exc).__name__)
"""


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeInternet]:
    internet = FakeInternet().start()
    try:
        yield internet
    finally:
        internet.close()


@pytest.fixture(scope="module")
def mixed(fake: FakeInternet) -> Iterator[ServerProcess]:
    """namespace (the default) and gvisor sandboxes on one server; only the fake internet's
    zone is resolvable (its DNS is the only upstream)."""
    env = {
        "VOIDRUN_ISOLATIONS": '["namespace", "gvisor"]',
        "VOIDRUN_WARM_POOL_SIZE": "0",
        "VOIDRUN_SANDBOX_DNS_UPSTREAMS": json.dumps([fake.dns]),
    }
    with sandbox_server(**env) as proc:
        yield proc


@pytest.fixture
def client(mixed: ServerProcess) -> Iterator[httpx.Client]:
    with mixed.client() as c:
        yield c


def sh(client: httpx.Client, sid: object, command: str) -> tuple[int, str]:
    response = client.post(
        f"/sandboxes/{sid}/exec", json={"command": command, "timeout": 60}, timeout=90
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    return int(data["exitCode"]), str(data["stdout"]) + str(data["stderr"])


def probe(client: httpx.Client, sid: object, *targets: str) -> dict[str, str]:
    code, out = sh(client, sid, f"python3 - {' '.join(targets)} <<'EOF'\n{PROBE}\nEOF")
    assert code == 0, out
    return {line.split()[0]: line.split()[1] for line in out.splitlines() if line.strip()}


def curl(client: httpx.Client, sid: object, url: str) -> str:
    code, out = sh(client, sid, f"curl -sS -m 5 {url}")
    return out if code == 0 else f"failed: {out}"


def lookup(client: httpx.Client, sid: object, name: str) -> tuple[int, str]:
    return sh(client, sid, f"getent hosts {name}")


def nft(*args: str) -> str:
    return subprocess.run(["nft", *args], capture_output=True, text=True).stdout


def table_of(server: ServerProcess) -> str:
    state_dir = (server.data_dir / "sandboxes").resolve()
    return "voidrun_" + hashlib.sha256(str(state_dir).encode()).hexdigest()[:6]


def gvisor(client: httpx.Client, name: str, **body: object) -> dict[str, object]:
    box = create_sandbox(client, name=name, isolation="gvisor", **body)
    assert box["isolation"] == "gvisor"
    return box


def test_both_isolations_wired_each_under_its_own_policy(
    mixed: ServerProcess, client: httpx.Client, fake: FakeInternet
) -> None:
    """One table, one bridge: a namespace sandbox with the internet off and a gvisor one with
    it on, then the other way round, each judged by its own chain."""
    plain = create_sandbox(client, name="ns-off", network={"allowInternetAccess": False})
    strong = gvisor(client, "gv-on")
    assert strong["network"] == {"allowInternetAccess": True, "allowOut": [], "denyOut": []}
    assert curl(client, strong["id"], f"http://{WEB_NAME}/") == "web"
    assert curl(client, plain["id"], f"http://{fake.web}/").startswith("failed")
    got = client.get(f"/sandboxes/{strong['id']}").json()["data"]
    assert got["networkUsage"]["rxBytes"] > 0 and got["networkUsage"]["txBytes"] > 0
    table = nft("list", "table", "inet", table_of(mixed))
    for box in (plain, strong):
        assert f"vr{str(box['id'])[-12:]}" in table
    assert f"sb_{plain['id']}" in table  # a policy of its own: a chain of its own
    assert f"sb_{strong['id']}" not in table  # the plain policy: the shared sb_default
    # the other way round: gvisor off (lookups included), namespace on
    off = gvisor(client, "gv-off", network={"allowInternetAccess": False})
    on = create_sandbox(client, name="ns-on")
    assert curl(client, on["id"], f"http://{WEB_NAME}/") == "web"
    assert probe(client, off["id"], f"{fake.web}:80") == {f"{fake.web}:80": "refused"}
    secret = f"s3cr3t-{secrets.token_hex(4)}.cdn.{ZONE}"
    code, out = lookup(client, off["id"], secret)
    assert code != 0 and fake.web not in out, out
    assert not fake.queried(secret)
    # the host and the other sandboxes are out of reach from gVisor's netstack too
    ns_address = sh(client, on["id"], "hostname -I")[1].split()[0]
    assert probe(client, strong["id"], f"{ns_address}:22", "169.254.169.254:80") == {
        f"{ns_address}:22": "refused",
        "169.254.169.254:80": "refused",
    }
    for box in (plain, strong, off, on):
        assert client.delete(f"/sandboxes/{box['id']}").status_code == 200


def test_gvisor_allow_out_allows_exactly_that(client: httpx.Client, fake: FakeInternet) -> None:
    box = gvisor(client, "gv-cidr", network={"allowOut": [f"{fake.web}/32"]})
    found = probe(client, box["id"], f"{fake.web}:80", f"{fake.other}:80")
    assert found == {f"{fake.web}:80": "open", f"{fake.other}:80": "refused"}
    assert client.delete(f"/sandboxes/{box['id']}").status_code == 200


def test_gvisor_patch_applies_live(client: httpx.Client, fake: FakeInternet) -> None:
    box = gvisor(client, "gv-live", network={"allowInternetAccess": False})
    assert probe(client, box["id"], f"{fake.web}:80") == {f"{fake.web}:80": "refused"}
    on = {"network": {"allowInternetAccess": True}}
    response = client.patch(f"/sandboxes/{box['id']}", json=on)
    assert response.status_code == 200, response.text
    assert response.json()["data"]["network"]["allowInternetAccess"] is True
    name = f"live-{secrets.token_hex(4)}.cdn.{ZONE}"
    code, out = lookup(client, box["id"], name)
    assert code == 0 and fake.web in out and fake.queried(name), out
    assert curl(client, box["id"], f"http://{fake.web}/") == "web"
    only = {"network": {"allowOut": [f"{fake.other}/32"]}}
    assert client.patch(f"/sandboxes/{box['id']}", json=only).status_code == 200
    found = probe(client, box["id"], f"{fake.web}:80", f"{fake.other}:80")
    assert found == {f"{fake.web}:80": "refused", f"{fake.other}:80": "open"}
    assert client.delete(f"/sandboxes/{box['id']}").status_code == 200


def test_gvisor_network_survives_stop_start_and_restart(
    mixed: ServerProcess, client: httpx.Client, fake: FakeInternet
) -> None:
    box = gvisor(client, "gv-restart", network={"allowOut": [WEB_NAME]})
    plain = create_sandbox(client, name="ns-restart", network={"allowInternetAccess": False})
    assert curl(client, box["id"], f"http://{WEB_NAME}/") == "web"
    assert client.post(f"/sandboxes/{box['id']}/stop").status_code == 200
    link = f"vr{str(box['id'])[-12:]}"
    assert not Path(f"/sys/class/net/{link}").exists()  # stop unwires it
    assert client.post(f"/sandboxes/{box['id']}/start").status_code == 200
    assert curl(client, box["id"], f"http://{WEB_NAME}/") == "web"
    assert curl(client, box["id"], f"http://{fake.other}/").startswith("failed")
    mixed.stop()
    mixed.start()
    with mixed.client() as fresh:
        assert curl(fresh, box["id"], f"http://{WEB_NAME}/") == "web"
        assert curl(fresh, box["id"], f"http://{fake.other}/").startswith("failed")
        assert curl(fresh, plain["id"], f"http://{fake.web}/").startswith("failed")
        table = table_of(mixed)
        for sid in (box["id"], plain["id"]):
            assert fresh.delete(f"/sandboxes/{sid}").status_code == 200
            assert not Path(f"/sys/class/net/vr{str(sid)[-12:]}").exists()
            assert f"sb_{sid}" not in nft("list", "table", "inet", table)
        assert not (mixed.data_dir / "gvisor" / str(box["id"])).exists()


def test_gvisor_preview_goes_through_the_agent(client: httpx.Client) -> None:
    """No ``PortOpener`` on gvisor (its loopback is gVisor's netstack, docs/isolation.md): the
    preview proxy reaches the port through the sandbox's agent (``port.connect``), beside a
    namespace sandbox's preview (``setns``) on the same server; a port nobody listens on is the
    same 502 on both."""
    ports = [{"protocol": "http", "port": 8000}, {"protocol": "http", "port": 8001}]
    strong = gvisor(client, "gv-preview", ports=ports)
    plain = create_sandbox(client, name="ns-preview", ports=ports)
    serve = "cd /tmp && (python3 -m http.server 8000 >/dev/null 2>&1 &) && sleep 1 && echo up"
    for box in (strong, plain):
        assert sh(client, box["id"], serve) == (0, "up\n")
        served = client.get(f"/sandboxes/{box['id']}/ports/8000/")
        assert served.status_code == 200, served.text
        assert "Directory listing" in served.text
        closed = client.get(f"/sandboxes/{box['id']}/ports/8001/")
        assert closed.status_code == 502, closed.text
        assert "nothing listens on port 8001" in closed.json()["error"]
    for box in (strong, plain):
        assert client.delete(f"/sandboxes/{box['id']}").status_code == 200
