"""The namespace driver's networking, below the API: the namespace it makes, the socket it
opens inside for the preview proxy, and what a stop, start and destroy leave behind."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from tests.drivers.contract import sh
from tests.drivers.harness import NamespaceHarness
from tests.support.server import free_test_subnet
from voidrun_server.drivers.base import DriverError, NetworkPolicy, PortClosedError
from voidrun_server.drivers.namespace import NamespaceDriver
from voidrun_server.drivers.namespace.network import NetworkConfig

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
