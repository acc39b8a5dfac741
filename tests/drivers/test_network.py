"""The namespace driver's networking, below the API: the namespace it makes, the socket it
opens inside for the preview proxy, what a stop, start and destroy leave behind, netlink
refusals and failed wiring, and domain sets that expire."""

from __future__ import annotations

import errno
import ipaddress
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from tests.drivers.contract import sh
from tests.drivers.harness import NamespaceHarness
from tests.support.fakenet import ZONE, FakeInternet
from tests.support.server import free_test_subnet
from voidrun_server.drivers.base import DriverError, NetworkPolicy, PortClosedError
from voidrun_server.drivers.namespace import NamespaceDriver, netns, rtnl
from voidrun_server.drivers.namespace.network import NetworkConfig
from voidrun_server.drivers.namespace.nftables import domain_set

pytestmark = pytest.mark.sandbox


@pytest.fixture
async def driver(namespace_harness: NamespaceHarness) -> AsyncIterator[NamespaceDriver]:
    config = NetworkConfig(subnet=ipaddress.ip_network(free_test_subnet()), upstreams=())
    driver = namespace_harness.new_driver(network=config)  # no domains: no resolver needed
    yield driver
    for sandbox_id in await driver.recover():
        await driver.destroy(sandbox_id)
    assert driver.net is not None
    await anyio.to_thread.run_sync(driver.net.host.remove_all)
    await anyio.to_thread.run_sync(driver.net.host.close)
    assert driver.net.host.table not in await anyio.to_thread.run_sync(nft_tables)


def nft_tables() -> str:
    return subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout


def wired(path: Path, link: str) -> tuple[bool, bool]:
    """(namespace pinned, host link present)"""
    return os.path.ismount(path), Path(f"/sys/class/net/{link}").exists()


SERVE_ONE = """
import socket
srv = socket.socket(); srv.bind(("127.0.0.1", 80)); srv.listen()
open("/tmp/ready", "w").close()
conn, _ = srv.accept(); conn.sendall(b"hello " + conn.recv(100)); conn.close()
"""


async def test_open_port_reaches_the_sandbox_loopback(
    namespace_harness: NamespaceHarness, driver: NamespaceDriver
) -> None:
    spec = namespace_harness.spec()
    info = await driver.create(spec)
    async with anyio.create_task_group() as group:
        # port 80 as root inside, although its capabilities do not count in this namespace
        group.start_soon(sh, info, f"python3 - <<'EOF'\n{SERVE_ONE}\nEOF")
        for _ in range(600):
            if namespace_harness.read_writable(spec.sandbox_id, "/tmp/ready") is not None:
                break
            await anyio.sleep(0.05)
        sock = await driver.open_port(spec.sandbox_id, 80, within=5)
        sock.setblocking(True)
        with sock:
            sock.sendall(b"proxy")
            assert sock.recv(100) == b"hello proxy"
    with pytest.raises(PortClosedError):
        await driver.open_port(spec.sandbox_id, 81, within=5)


async def test_the_namespace_belongs_to_the_host_and_survives_pause(
    namespace_harness: NamespaceHarness, driver: NamespaceDriver
) -> None:
    spec = namespace_harness.spec(network=NetworkPolicy(allow_internet=False))
    info = await driver.create(spec)
    path = await driver.netns_path(spec.sandbox_id)
    link = f"vr{spec.sandbox_id[-12:]}"
    assert wired(path, link) == (True, True)
    assert info.pid is not None
    assert os.stat(f"/proc/{info.pid}/ns/net").st_ino == os.stat(path).st_ino  # noqa: ASYNC240
    # the host's user namespace owns it: root inside holds no CAP_NET_ADMIN there
    code, out = await sh(
        info,
        "cat /proc/sys/net/ipv4/ip_unprivileged_port_start; "
        "echo 1 > /proc/sys/net/ipv4/ip_unprivileged_port_start; echo rc=$?",
    )
    assert out.startswith("0\n") and "rc=0" not in out, out
    code, out = await sh(info, "cat /proc/sys/net/ipv6/conf/all/disable_ipv6")
    assert out.strip() == "1"
    await driver.pause(spec.sandbox_id)
    await driver.resume(spec.sandbox_id)
    assert wired(path, link) == (True, True)
    await driver.stop(spec.sandbox_id)
    assert wired(path, link) == (False, False)
    info = await driver.start(spec.sandbox_id)
    assert wired(path, link) == (True, True)
    await driver.destroy(spec.sandbox_id)
    assert wired(path, link) == (False, False)


async def test_without_networking_sandboxes_stay_loopback_only(
    namespace_harness: NamespaceHarness,
) -> None:
    plain = namespace_harness.new_driver()
    assert not plain.network_enabled
    spec = namespace_harness.spec()
    info = await plain.create(spec)
    code, out = await sh(info, "cat /proc/net/dev")
    assert "eth0" not in out
    path = await plain.netns_path(spec.sandbox_id)  # the proxy still gets a way in
    assert path == Path(f"/proc/{info.pid}/ns/net")
    with pytest.raises(DriverError, match="networking is off"):
        await plain.set_network_policy(spec.sandbox_id, NetworkPolicy())


def test_a_refused_netlink_message_is_reported_and_the_batch_carries_on(tmp_path: Path) -> None:
    """Every acknowledgement of a batch is read: a refusal in the middle names the message,
    the errno and the kernel's reason, and the messages around it still happen."""
    path = tmp_path / "netns"
    inside = netns.create(path)  # a namespace of this test's own
    try:
        batch = (
            rtnl.Batch()
            .address(1, ipaddress.IPv4Address("10.99.0.1"), 8)
            .address(999, ipaddress.IPv4Address("10.99.0.2"), 8)  # no such link
            .link_up(1)
        )
        failures = inside.run(batch)
        assert [f.errno for f in failures] == [errno.ENODEV], failures
        assert "link #999" in str(failures[0])
        with netns.entered(path):
            out = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
        assert "10.99.0.1/8" in out and "10.99.0.2" not in out and "LOOPBACK,UP" not in out
        with pytest.raises(rtnl.NetlinkFailure, match="File exists"):  # the same address again
            inside.check(rtnl.Batch().address(1, ipaddress.IPv4Address("10.99.0.1"), 8))
    finally:
        inside.close()
        netns.remove(path)


async def test_a_wiring_failure_is_a_driver_error_and_leaves_nothing(
    namespace_harness: NamespaceHarness, driver: NamespaceDriver
) -> None:
    """The host route to the sandbox's address cannot be added (someone holds it): create
    fails with a DriverError naming it, and no link, namespace, rule or process stays."""
    assert driver.net is not None
    host = driver.net.host
    address = str(host.config.subnet.network_address + 2)  # the first address handed out
    await anyio.to_thread.run_sync(ip_route, "add", address, host.dummy)
    spec = namespace_harness.spec()
    link = f"vr{spec.sandbox_id[-12:]}"
    try:
        with pytest.raises(DriverError) as caught:
            await driver.create(spec)
        assert "add route" in str(caught.value.details) and "File exists" in str(
            caught.value.details
        )
        assert wired(namespace_harness.run_dir(spec.sandbox_id).netns, link) == (False, False)
        assert f"sb_{spec.sandbox_id}" not in nft_tables_of(host.table)
        assert link not in nft_tables_of(host.table)  # nor in sb_default's sets
        assert namespace_harness.leftovers(spec.sandbox_id) == []
    finally:
        await anyio.to_thread.run_sync(ip_route, "del", address, host.dummy)
    info = await driver.create(namespace_harness.spec())  # and the address is free again
    code, out = await sh(info, "cat /proc/net/route")
    assert code == 0 and "eth0" in out


def ip_route(op: str, address: str, dev: str) -> None:
    subprocess.run(["ip", "route", op, f"{address}/32", "dev", dev], check=True)


def nft_tables_of(table: str) -> str:
    return subprocess.run(
        ["nft", "list", "table", "inet", table], capture_output=True, text=True
    ).stdout


def set_elements(table: str, name: str) -> str:
    out = subprocess.run(
        ["nft", "list", "set", "inet", table, domain_set(name)], capture_output=True, text=True
    ).stdout
    return out.split("elements = ", 1)[1] if "elements = " in out else ""


CONNECT = """
import socket, sys, time
address, rounds = socket.gethostbyname(sys.argv[1]), int(sys.argv[2])  # one lookup
for _ in range(rounds):
    try:
        socket.create_connection((address, 80), timeout=3).close(); print("open")
    except OSError as exc:
        print("refused", type(exc).__name__)
    time.sleep(0.5)
"""


async def test_resolved_addresses_expire_unless_used(namespace_harness: NamespaceHarness) -> None:
    """Domain sets time out: an address stays while the sandbox keeps using it, goes once
    unused for the set's timeout (a raw-IP connection is refused again) and comes back with
    the next lookup through the resolver."""
    fake = FakeInternet().start()
    config = NetworkConfig(
        subnet=ipaddress.ip_network(free_test_subnet()),
        upstreams=(f"/{ZONE}/{fake.dns}",),
        domain_timeout=2,
    )
    driver = namespace_harness.new_driver(network=config)
    assert driver.net is not None
    table = driver.net.host.table
    name = "expiry.cdn." + ZONE
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(driver.serve_network)
            spec = namespace_harness.spec(network=NetworkPolicy(allow_out=(name,)))
            info = await driver.create(spec)
            # one lookup, then connections to the address for three set timeouts in a row:
            # each renews it
            code, out = await sh(info, f"python3 - {name} 12 <<'EOF'\n{CONNECT}\nEOF")
            assert out.split() == ["open"] * 12, out
            assert fake.web in set_elements(table, name)
            for _ in range(200):  # unused now: it goes
                if fake.web not in set_elements(table, name):
                    break
                await anyio.sleep(0.1)
            assert fake.web not in set_elements(table, name)
            code, out = await sh(info, f"python3 - {fake.web} 1 <<'EOF'\n{CONNECT}\nEOF")
            assert out.split()[0] == "refused", out
            code, out = await sh(info, f"python3 - {name} 1 <<'EOF'\n{CONNECT}\nEOF")
            assert out.split() == ["open"], out
            await driver.destroy(spec.sandbox_id)
            group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(driver.net.host.remove_all)
            await anyio.to_thread.run_sync(driver.net.host.close)
            fake.close()
