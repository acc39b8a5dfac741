"""Sandbox egress under a policy, against a fake internet this module builds (docs/network.md).

One server for the module; its resolver asks the fake internet's DNS for ``vr-test.example``
and the host's resolvers for everything else (the package registries, for ``pip``). Test
traffic goes to loopback, to the namespace ``FakeInternet`` makes, and to the registries only.
Refused connections are rejected at once, so the probes' short timeouts only bound failures.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fakenet import OTHER_NAME, WEB_NAME, ZONE, FakeInternet
from tests.support.http import assert_error
from tests.support.sandboxes import create_sandbox, sandbox_server
from tests.support.server import ServerProcess
from voidrun_server.drivers.namespace.nftables import domain_set
from voidrun_server.drivers.namespace.resolver import host_resolvers

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
def server(fake: FakeInternet) -> Iterator[ServerProcess]:
    upstreams = [f"/{ZONE}/{fake.dns}", *host_resolvers()]
    with sandbox_server(VOIDRUN_SANDBOX_DNS_UPSTREAMS=json.dumps(upstreams)) as proc:
        yield proc


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def sh(client: httpx.Client, sid: object, command: str, timeout: int = 60) -> tuple[int, str]:
    response = client.post(
        f"/sandboxes/{sid}/exec", json={"command": command, "timeout": timeout}, timeout=90
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


def table_of(server: ServerProcess) -> str:
    state_dir = (server.data_dir / "sandboxes").resolve()
    return "voidrun_" + hashlib.sha256(str(state_dir).encode()).hexdigest()[:6]


def nft(*args: str) -> str:
    return subprocess.run(["nft", *args], capture_output=True, text=True).stdout


def test_default_policy_reaches_the_internet_and_is_accounted(
    server: ServerProcess, client: httpx.Client, fake: FakeInternet
) -> None:
    box = create_sandbox(client, name="net-default")
    assert box["network"] == {"allowInternetAccess": True, "allowOut": [], "denyOut": []}
    assert curl(client, box["id"], f"http://{fake.web}/") == "web"
    assert curl(client, box["id"], f"http://{WEB_NAME}/") == "web"
    got = client.get(f"/sandboxes/{box['id']}").json()["data"]
    assert got["network"] == box["network"]
    assert got["networkUsage"]["rxBytes"] > 0 and got["networkUsage"]["txBytes"] > 0
    metrics = httpx.get(f"{server.url}/metrics").text
    assert f'voidrun_sandbox_network_rx_bytes_total{{sandbox="{box["id"]}"}}' in metrics


def lookup(client: httpx.Client, sid: object, name: str) -> tuple[int, str]:
    return sh(client, sid, f"getent hosts {name}")


def test_internet_off_refuses_everything_dns_included(
    client: httpx.Client, fake: FakeInternet
) -> None:
    """No lookups leave through the resolver (they could carry data out), and a PATCH turns
    that on and off live."""
    box = create_sandbox(client, name="net-off", network={"allowInternetAccess": False})
    assert box["network"]["allowInternetAccess"] is False
    assert curl(client, box["id"], f"http://{fake.web}/").startswith("failed")
    secret = f"s3cr3t-{secrets.token_hex(4)}.cdn.{ZONE}"
    code, out = lookup(client, box["id"], secret)
    assert code != 0 and fake.web not in out, out
    assert not fake.queried(secret)
    # the same sandbox, internet on: the name resolves (so the fake's log does show queries)
    on = {"network": {"allowInternetAccess": True}}
    assert client.patch(f"/sandboxes/{box['id']}", json=on).status_code == 200
    code, out = lookup(client, box["id"], secret)
    assert code == 0 and fake.web in out, out
    assert fake.queried(secret)
    off = {"network": {"allowInternetAccess": False}}
    assert client.patch(f"/sandboxes/{box['id']}", json=off).status_code == 200
    again = f"again-{secrets.token_hex(4)}.cdn.{ZONE}"
    code, out = lookup(client, box["id"], again)
    assert code != 0 and not fake.queried(again), out


def test_with_allow_out_only_allowed_names_are_looked_up(
    client: httpx.Client, fake: FakeInternet
) -> None:
    """With allowOut, names outside its domains never reach the internet's DNS (answered
    NXDOMAIN by the server's resolver); a PATCH changes which names pass, live."""
    first = f"one-{secrets.token_hex(3)}.cdn.{ZONE}"
    second = f"two-{secrets.token_hex(3)}.cdn.{ZONE}"
    box = create_sandbox(client, name="net-dns-allowed", network={"allowOut": [first]})
    code, out = lookup(client, box["id"], f"www.{first}")  # a name under the allowed one
    assert code == 0 and fake.web in out, out
    assert fake.queried(f"www.{first}")
    leak = f"leak-{secrets.token_hex(4)}.cdn.{ZONE}"
    code, out = lookup(client, box["id"], leak)
    assert code != 0 and not fake.queried(leak), out
    code, out = lookup(client, box["id"], second)
    assert code != 0 and not fake.queried(second), out
    patch = {"network": {"allowOut": [second]}}
    assert client.patch(f"/sandboxes/{box['id']}", json=patch).status_code == 200
    code, out = lookup(client, box["id"], second)
    assert code == 0 and fake.web in out and fake.queried(second), out
    code, out = lookup(client, box["id"], f"again.{first}")
    assert code != 0 and not fake.queried(f"again.{first}"), out


def test_allow_out_by_cidr_allows_exactly_that(client: httpx.Client, fake: FakeInternet) -> None:
    box = create_sandbox(client, name="net-cidr", network={"allowOut": [f"{fake.web}/32"]})
    found = probe(client, box["id"], f"{fake.web}:80", f"{fake.other}:80")
    assert found == {f"{fake.web}:80": "open", f"{fake.other}:80": "refused"}


def test_allow_out_by_domain_needs_the_name(
    server: ServerProcess, client: httpx.Client, fake: FakeInternet
) -> None:
    name = "byname.cdn." + ZONE  # a domain no other test names: its set starts empty
    box = create_sandbox(client, name="net-domain", network={"allowOut": [name]})
    # a raw-IP connection to the address the name will resolve to: never resolved, refused
    assert probe(client, box["id"], f"{fake.web}:80") == {f"{fake.web}:80": "refused"}
    assert curl(client, box["id"], f"http://{name}/") == "web"
    # the resolver put the address in the domain's set, where it expires unless used
    listed = nft("list", "set", "inet", table_of(server), domain_set(name))
    assert "timeout 15m" in listed and f"{fake.web} expires" in listed, listed
    assert curl(client, box["id"], f"http://{OTHER_NAME}/").startswith("failed")
    # deny wins over allow
    response = client.patch(
        f"/sandboxes/{box['id']}", json={"network": {"allowOut": [name], "denyOut": [name]}}
    )
    assert response.status_code == 200, response.text
    assert curl(client, box["id"], f"http://{name}/").startswith("failed")


KEEP_ALIVE = """
import http.client, os, time
conn = http.client.HTTPConnection("{web}", 80, timeout=3)
conn.request("GET", "/"); print("first", conn.getresponse().read().decode(), flush=True)
open("/tmp/first", "w").close()
while not os.path.exists("/tmp/go"):
    time.sleep(0.05)
try:
    conn.request("GET", "/"); print("second", conn.getresponse().read().decode())
except OSError as exc:
    print("second cut", type(exc).__name__)
"""


def test_patch_applies_to_open_connections(
    server: ServerProcess, client: httpx.Client, fake: FakeInternet
) -> None:
    box = create_sandbox(client, name="net-live")
    result: list[tuple[int, str]] = []
    script = KEEP_ALIVE.format(web=fake.web)

    def run() -> None:
        with server.client() as own:
            result.append(sh(own, box["id"], f"python3 - <<'EOF'\n{script}\nEOF"))

    worker = threading.Thread(target=run)
    worker.start()
    try:
        for _ in range(600):  # the connection is open and has answered once
            if sh(client, box["id"], "test -e /tmp/first")[0] == 0 or not worker.is_alive():
                break
        response = client.patch(
            f"/sandboxes/{box['id']}", json={"network": {"allowInternetAccess": False}}
        )
        assert response.status_code == 200, response.text
        assert response.json()["data"]["network"]["allowInternetAccess"] is False
    finally:
        sh(client, box["id"], "touch /tmp/go")
        worker.join(120)
    code, out = result[0]
    assert "first web" in out, out
    assert "second cut" in out, out


def host_addresses() -> list[str]:
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines()]


@pytest.mark.parametrize(
    "network",
    [None, {"allowOut": ["0.0.0.0/0"]}, {"allowInternetAccess": False}],
    ids=["default", "allow-all", "internet-off"],
)
def test_host_neighbours_and_metadata_are_never_reachable(
    server: ServerProcess, client: httpx.Client, network: dict[str, Any] | None
) -> None:
    body = {"network": network} if network else {}
    neighbour = create_sandbox(client, name="net-neighbour")
    code, _ = sh(client, neighbour["id"], "nohup python3 -m http.server 8000 >/dev/null 2>&1 &")
    box = create_sandbox(client, name="net-probe", **body)
    neighbour_ip = sh(client, neighbour["id"], "hostname -I")[1].split()[0]
    targets = [f"{a}:{server.port}" for a in host_addresses()]
    targets += [f"{a}:22" for a in host_addresses()]
    targets += [f"{neighbour_ip}:8000", "169.254.169.254:80"]
    found = probe(client, box["id"], *targets)
    assert set(found.values()) == {"refused"}, found
    # the neighbour does listen (its own loopback sees it)
    assert probe(client, neighbour["id"], "127.0.0.1:8000") == {"127.0.0.1:8000": "open"}


UNDO = r"""
import ctypes, errno, fcntl, os, socket, struct
def attempt(name, fn):
    try:
        fn(); print(name, "DONE")
    except OSError as exc:
        print(name, "refused", errno.errorcode.get(exc.errno, exc.errno))
def iface_down():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fcntl.ioctl(s, 0x8914, struct.pack("16sH22x", b"eth0", 0))  # SIOCSIFFLAGS
def netlink(proto, msg_type, payload, flags=0x5):  # NLM_F_REQUEST|NLM_F_ACK
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, proto)
    s.bind((0, 0))
    s.send(struct.pack("=LHHLL", 16 + len(payload), msg_type, flags, 1, 0) + payload)
    reply = s.recv(65536)
    code = struct.unpack("=i", reply[16:20])[0]
    if code:
        raise OSError(-code, os.strerror(-code))
def del_default_route():  # RTM_DELROUTE, rtmsg for 0.0.0.0/0 in the main table
    netlink(0, 25, struct.pack("=BBBBBBBBI", 2, 0, 0, 0, 254, 0, 0, 0, 0))
def add_route():  # RTM_NEWROUTE 1.2.3.0/24 (no gateway: the kernel still checks permission)
    netlink(0, 24, struct.pack("=BBBBBBBBI", 2, 24, 0, 0, 254, 4, 0, 1, 0), 0x605)
def nft_flush():  # NFT_MSG_DELTABLE for every table ("nft flush ruleset")
    netlink(12, (10 << 8) | 2, struct.pack("=BBH", 0, 0, 0))
def raw_socket():  # what iptables (legacy) needs first
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
def sysctl():
    open("/proc/sys/net/ipv4/conf/eth0/forwarding", "w").write("1")
for name, fn in [("iface-down", iface_down), ("route-del", del_default_route),
                 ("route-add", add_route), ("nft-flush", nft_flush),
                 ("iptables", raw_socket), ("sysctl", sysctl)]:
    attempt(name, fn)
"""


def test_root_inside_cannot_undo_the_rules(client: httpx.Client, fake: FakeInternet) -> None:
    box = create_sandbox(client, name="net-undo", network={"allowInternetAccess": False})
    code, out = sh(client, box["id"], f"python3 - <<'EOF'\n{UNDO}\nEOF")
    assert code == 0 and "DONE" not in out, out
    assert out.count("refused") == 6, out
    # (the image has no ip, nft or iptables binaries; these are the syscalls they make)
    assert probe(client, box["id"], f"{fake.web}:80") == {f"{fake.web}:80": "refused"}


def test_delete_leaves_no_link_rule_or_set(server: ServerProcess, client: httpx.Client) -> None:
    name = "gone.cdn." + ZONE
    box = create_sandbox(client, name="net-delete", network={"allowOut": [name]})
    sid = str(box["id"])
    link = f"vr{sid[-12:]}"
    table = table_of(server)
    assert Path(f"/sys/class/net/{link}").exists()
    assert f"sb_{sid}" in nft("list", "table", "inet", table)
    before_sets = nft("list", "table", "inet", table)  # this server's sets only
    assert client.delete(f"/sandboxes/{sid}").status_code == 200
    assert not Path(f"/sys/class/net/{link}").exists()
    listing = nft("list", "table", "inet", table)
    assert sid not in listing and link not in listing
    assert before_sets.count("set d_") == listing.count("set d_") + 1
    assert not (server.data_dir / "sandboxes" / sid).exists()


SPOOF = """
import socket, sys
source, target = sys.argv[1], sys.argv[2]
try:
    s = socket.socket(); s.settimeout(2); s.bind((source, 0)); s.connect((target, 80))
    print(source, "open")
except OSError as exc:
    print(source, "dropped", type(exc).__name__)
"""


def from_netns(server: ServerProcess, sid: str, source: str, target: str) -> str:
    """Connect to ``target``:80 from inside the sandbox's network namespace as the host's
    root, bound to ``source``: what a sandbox could send if it could forge its address
    (it cannot: no CAP_NET_ADMIN or CAP_NET_RAW over a namespace the host owns)."""
    netns = server.data_dir / "sandboxes" / sid / "netns"
    out = subprocess.run(
        ["nsenter", f"--net={netns}", sys.executable, "-c", SPOOF, source, target],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    words = out.stdout.split()
    return words[1] if len(words) > 1 else out.stderr


@pytest.mark.parametrize("network", [None, {"denyOut": ["192.0.2.0/24"]}], ids=["plain", "own"])
def test_a_forged_source_address_is_dropped(
    server: ServerProcess, client: httpx.Client, fake: FakeInternet, network: Any
) -> None:
    """Anti-spoofing, in the shared chain of the plain policy and in a chain of its own."""
    body: dict[str, Any] = {"name": "net-spoof", **({"network": network} if network else {})}
    box = create_sandbox(client, **body)
    sid = str(box["id"])
    ask = f"import socket; s = socket.socket(2, 2); s.connect(('{fake.web}', 80)); "
    code, out = sh(client, sid, f'python3 -c "{ask}print(s.getsockname()[0])"')
    assert code == 0, out
    real = out.split()[0]
    forged = str(ipaddress.IPv4Address(real) + 100)
    netns = server.data_dir / "sandboxes" / sid / "netns"
    subprocess.run(
        ["nsenter", f"--net={netns}", "ip", "addr", "add", f"{forged}/32", "dev", "eth0"],
        check=True,
    )
    # replies to the forged address find their way back: only the rule can stop it
    route = ["ip", "route", "add", f"{forged}/32", "dev", f"vr{sid[-12:]}"]
    subprocess.run(route, check=True)
    try:
        assert from_netns(server, sid, real, fake.web) == "open"  # the control
        assert from_netns(server, sid, forged, fake.web) == "dropped"
    finally:
        subprocess.run(["ip", "route", "del", *route[3:]], check=False)
    assert client.delete(f"/sandboxes/{sid}").status_code == 200


def test_the_plain_policy_shares_one_chain_and_changes_leave_nothing(
    server: ServerProcess, client: httpx.Client, fake: FakeInternet
) -> None:
    """Sandboxes with the plain policy go through ``sb_default`` (no chain each: adding a
    jump element makes the kernel validate the whole table); a policy of their own moves
    them to a chain of their own and back, and a delete leaves neither."""
    box = create_sandbox(client, name="net-plain")
    sid = str(box["id"])
    link, table = f"vr{sid[-12:]}", table_of(server)
    listing = nft("list", "table", "inet", table)
    assert f"sb_{sid}" not in listing and link in listing and "sb_default" in listing
    own = {"network": {"allowOut": [f"{fake.web}/32"]}}
    assert client.patch(f"/sandboxes/{sid}", json=own).status_code == 200
    listing = nft("list", "table", "inet", table)
    assert f"sb_{sid}" in listing
    assert f'"{link}"' not in nft("list", "set", "inet", table, "default_links")
    assert curl(client, sid, f"http://{fake.web}/") == "web"
    assert curl(client, sid, f"http://{fake.other}/").startswith("failed")
    plain = {"network": {"allowInternetAccess": True, "allowOut": [], "denyOut": []}}
    assert client.patch(f"/sandboxes/{sid}", json=plain).status_code == 200
    listing = nft("list", "table", "inet", table)
    assert f"sb_{sid}" not in listing and link in listing
    assert curl(client, sid, f"http://{fake.other}/") == "other"
    assert client.delete(f"/sandboxes/{sid}").status_code == 200
    assert link not in nft("list", "table", "inet", table)


def test_restart_keeps_networking_and_policies(
    server: ServerProcess, client: httpx.Client, fake: FakeInternet
) -> None:
    allowed = create_sandbox(client, name="net-restart", network={"allowOut": [WEB_NAME]})
    assert curl(client, allowed["id"], f"http://{WEB_NAME}/") == "web"
    server.stop()
    server.start()
    with server.client() as fresh:
        assert curl(fresh, allowed["id"], f"http://{WEB_NAME}/") == "web"
        assert curl(fresh, allowed["id"], f"http://{fake.other}/").startswith("failed")
        # stop/start brings the link back with the same policy
        assert fresh.post(f"/sandboxes/{allowed['id']}/stop").status_code == 200
        assert fresh.post(f"/sandboxes/{allowed['id']}/start").status_code == 200
        assert curl(fresh, allowed["id"], f"http://{WEB_NAME}/") == "web"
        assert curl(fresh, allowed["id"], f"http://{fake.other}/").startswith("failed")


def test_pip_download_through_the_registry(client: httpx.Client) -> None:
    box = create_sandbox(client, name="net-pip")
    code, out = sh(client, box["id"], "pip download --no-deps six -d /tmp/wheels", timeout=180)
    assert code == 0, out
    off = create_sandbox(client, name="net-pip-off", network={"allowInternetAccess": False})
    code, out = sh(
        client,
        off["id"],
        "pip download --no-deps --retries 0 --timeout 5 six -d /tmp/wheels",
        timeout=120,
    )
    assert code != 0 and "Traceback" not in out, out


@pytest.mark.parametrize(
    "network, words",
    [
        ({"allowOut": ["1.2.3.0/33"]}, "allowOut[0]: invalid address or CIDR"),
        ({"denyOut": ["bad_name.example"]}, "denyOut[0]: invalid domain name"),
        ({"allowOut": [f"h{i}.example.org" for i in range(201)]}, "at most 200 entries"),
        ({"allowOut": "example.org"}, "allowOut"),
        ({"allowInternet": True}, "allowInternet"),
    ],
)
def test_bad_policies_are_400_and_create_nothing(
    client: httpx.Client, network: dict[str, Any], words: str
) -> None:
    before = client.get("/sandboxes").json()["meta"]["total"]
    response = client.post("/sandboxes", json={"name": "net-bad", "network": network})
    assert_error(response, 400)
    assert words in response.json().get("details", ""), response.text
    assert client.get("/sandboxes").json()["meta"]["total"] == before


def test_bad_patch_is_400(client: httpx.Client) -> None:
    box = create_sandbox(client, name="net-badpatch")
    response = client.patch(f"/sandboxes/{box['id']}", json={"network": {"allowOut": ["x y"]}})
    assert_error(response, 400)
    assert client.get(f"/sandboxes/{box['id']}").json()["data"]["network"] == box["network"]
