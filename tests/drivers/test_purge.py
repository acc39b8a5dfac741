"""``purge`` (drivers/namespace/purge.py) below the API: sandboxes in every state, a torn
create and a sandbox that lost its record are all removed, with the network of the driver."""

from __future__ import annotations

import ipaddress
import os

import anyio
import anyio.to_thread
import pytest

from tests.drivers.harness import NamespaceHarness
from tests.support.hostleaks import track_subnet
from tests.support.server import free_test_subnet
from voidrun_server.drivers.namespace import disk, netns
from voidrun_server.drivers.namespace.cgroups import CgroupLimits
from voidrun_server.drivers.namespace.leftovers import HostView, Leftover, find
from voidrun_server.drivers.namespace.network import NetworkConfig
from voidrun_server.drivers.namespace.purge import purge
from voidrun_server.drivers.namespace.state import RunDir

pytestmark = pytest.mark.sandbox


def torn_create(harness: NamespaceHarness, sandbox_id: str) -> RunDir:
    """What a server killed mid-create leaves: a run dir without a record, its disk mounted
    from a loop device, a pinned network namespace and a cgroup; no process."""
    run = RunDir.of(harness.state_dir, sandbox_id)
    run.root.mkdir(mode=0o700)
    template = disk.DiskTemplates(harness.state_dir / ".templates").get(64)
    disk.provision_image(template, run.disk_image)
    run.disk_mount.mkdir()
    disk.mount_image(run.disk_image, run.disk_mount)
    netns.create(run.netns).close()  # it returns a netlink socket inside it
    driver = harness.drivers[0]
    driver._host.cgroups.create(sandbox_id, CgroupLimits(cpu=1, mem_mb=64, pids_max=16))
    return run


async def test_purge_removes_every_state_and_half_made_ones(
    namespace_harness: NamespaceHarness,
) -> None:
    subnet = free_test_subnet()
    track_subnet(subnet)
    config = NetworkConfig(subnet=ipaddress.ip_network(subnet), upstreams=())
    driver = namespace_harness.new_driver(network=config)
    state_dir = namespace_harness.state_dir.resolve()
    running, paused, stopped, unrecorded = (namespace_harness.spec() for _ in range(4))
    for spec in (running, paused, stopped, unrecorded):
        await driver.create(spec)
    await driver.pause(paused.sandbox_id)
    await driver.stop(stopped.sandbox_id)
    RunDir.of(state_dir, unrecorded.sandbox_id).state_file.unlink()  # processes, no record
    torn = torn_create(namespace_harness, namespace_harness.spec().sandbox_id)
    ids = [s.sandbox_id for s in (running, paused, stopped, unrecorded)] + [torn.sandbox_id]
    assert driver.net is not None
    await anyio.to_thread.run_sync(driver.net.host.close)  # as if the server had died

    def look() -> list[Leftover]:
        view = HostView.read((namespace_harness.cgroup_parent,))
        net = ipaddress.IPv4Network(subnet)
        return find(view, [state_dir], [state_dir], [net], sandbox_ids=ids)

    before = await anyio.to_thread.run_sync(look)
    assert {"mount", "loop device", "link", "nft table", "cgroup"} <= {i.kind for i in before}
    wired = {running, paused, unrecorded}  # a stopped sandbox and a torn create have no link
    links = {i.name for i in before if i.kind == "link"}
    assert {netns.host_link_name(s.sandbox_id) for s in wired} <= links
    result = await anyio.to_thread.run_sync(
        lambda: purge(state_dir, cgroup_parent=namespace_harness.cgroup_parent)
    )
    assert result.clean, (result.left, result.errors)
    assert sorted(result.sandboxes) == sorted(ids)
    assert set(before) <= set(result.removed)
    assert await anyio.to_thread.run_sync(look) == []
    assert not [p for p in state_dir.iterdir() if p.name in ids]
    assert not [d for d in namespace_harness.cgroup_dirs(unrecorded.sandbox_id) if d.exists()]


async def test_purge_sweeps_a_deleted_state_dir(namespace_harness: NamespaceHarness) -> None:
    """A disk still mounted below a state dir whose files are gone (the leak of test runs
    that deleted a data dir under running sandboxes) is found from the kernel's side."""
    namespace_harness.new_driver()
    state_dir = namespace_harness.state_dir.resolve()
    run = torn_create(namespace_harness, namespace_harness.spec().sandbox_id)
    os.unlink(run.disk_image)  # the loop device keeps the deleted file

    def look() -> list[Leftover]:
        view = HostView.read((namespace_harness.cgroup_parent,))
        return find(view, [state_dir], [state_dir])

    before = await anyio.to_thread.run_sync(look)
    assert {"mount", "loop device"} <= {i.kind for i in before}
    result = await anyio.to_thread.run_sync(
        lambda: purge(state_dir, cgroup_parent=namespace_harness.cgroup_parent)
    )
    assert result.clean, (result.left, result.errors)
    assert await anyio.to_thread.run_sync(look) == []
    assert not await anyio.to_thread.run_sync(run.root.exists)
