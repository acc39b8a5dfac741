"""The ``gvisor`` driver: the whole driver contract, its platform choice, and escapes that
must fail inside gVisor (its own kernel, no host files or processes, limits, loopback only).

A host without runsc fails this module as a ``sandbox`` tier skip (CI installs runsc through
scripts/install-system-deps.sh). The platform is probed once per session
(``gvisor_platform``); each test's driver is told the answer, so a platform that hangs here
(kvm on a PVM host) costs its probe timeout once.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.drivers.contract import DriverContract, sh
from tests.drivers.gvisor_harness import GvisorHarness
from tests.drivers.harness import eventually, host_can_fork, mountinfo_lines, proc_status, read_text
from tests.drivers.test_isolation import spawn_host_process
from tests.support.hostleaks import new_state_dir, track
from tests.support.tiers import skip_tier
from voidrun_server.agentclient import AgentError
from voidrun_server.drivers.base import DriverUnavailableError, SandboxState

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="session")
def gvisor_platform(namespace_rootfs: Path, cgroup_parent: str) -> Iterator[str]:
    """The platform the driver picks on this host (probed once, in a state dir of its own)."""
    from voidrun_server.drivers.gvisor import GvisorDriver, check_host

    try:
        check_host()
    except DriverUnavailableError as exc:
        skip_tier("sandbox", f"the gvisor driver cannot run: {exc.message} ({exc.hint})")
    state_dir = new_state_dir("voidrun-gvisor-probe-")
    track(state_dir, cgroup_parent=cgroup_parent)
    driver = GvisorDriver(
        state_dir, agent_argv=lambda s: [], agent_dir=state_dir, cgroup_parent=cgroup_parent
    )
    yield driver.platform
    shutil.rmtree(state_dir)


@pytest.fixture
async def gvisor_harness(
    namespace_rootfs: Path, gvisor_platform: str, cgroup_parent: str
) -> AsyncIterator[GvisorHarness]:
    """Every sandbox destroyed, and checked to be gone, at teardown."""
    state_dir = new_state_dir("voidrun-gvisor-")
    track(state_dir, cgroup_parent=cgroup_parent)
    harness = GvisorHarness(state_dir, namespace_rootfs, cgroup_parent, platform=gvisor_platform)
    try:
        yield harness
    finally:
        if harness.drivers:
            driver = harness.drivers[0]
            found = await driver.recover()
            for sandbox_id in found:
                await driver.destroy(sandbox_id)
            for sandbox_id in found:
                assert harness.leftovers(sandbox_id) == []
        mounted = [line for line in mountinfo_lines() if str(state_dir) in line]
        assert not mounted, f"mounts left under {state_dir}: {mounted}"
        shutil.rmtree(state_dir)


@pytest.fixture
def harness(gvisor_harness: GvisorHarness) -> GvisorHarness:
    return gvisor_harness


class TestGvisorContract(DriverContract):
    pass


# -- escapes that must fail inside gVisor ---------------------------------------------------
# These tests of the namespace driver's suite hold unchanged on gVisor (they take ``harness``,
# which is the gvisor harness in this module).
from tests.drivers.test_isolation import (  # noqa: E402
    test_cannot_read_host_files,
    test_disk_limit_is_enospc_inside,
    test_network_is_loopback_only,
    test_symlinks_resolve_inside_the_sandbox,
)

__all__ = [
    "test_cannot_read_host_files",
    "test_disk_limit_is_enospc_inside",
    "test_network_is_loopback_only",
    "test_symlinks_resolve_inside_the_sandbox",
]

FORK_BOMB = """
import os, time
ok = failed = 0
for _ in range(200):
    try:
        pid = os.fork()
    except OSError:
        failed += 1
        continue
    if pid == 0:
        os.close(1); os.close(2)
        time.sleep(60)
        os._exit(0)
    ok += 1
print(ok, failed)
"""


async def test_kernel_is_gvisor(harness: GvisorHarness) -> None:
    driver = harness.new_driver()
    info = await driver.create(harness.spec())
    code, out = await sh(info, "uname -r; dmesg | head -1")
    assert code == 0, out
    release, first = out.splitlines()[:2]
    assert release != os.uname().release
    assert "Starting gVisor" in first
    assert driver.describe()["platform"] == harness.platform


async def test_host_processes_are_invisible(harness: GvisorHarness) -> None:
    host = spawn_host_process()
    try:
        driver = harness.new_driver()
        info_a = await driver.create(harness.spec())
        info_b = await driver.create(harness.spec())
        code, out = await sh(
            info_a, "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '; echo; echo /proc/[0-9]*"
        )
        assert "marker-host" not in out and "voidrun_agent" in out, out  # ours only
        pids = out.splitlines()[-1].split()
        assert len(pids) <= 6, out  # the agent, sh, cat, tr: gVisor pids
        code, _ = await sh(info_a, f"kill -9 {host.pid} {info_b.pid}")
        assert code != 0
        assert host.poll() is None
        assert (await sh(info_b, "echo alive"))[1].strip() == "alive"
    finally:
        host.kill()
        host.wait()


async def test_root_inside_is_nobody_outside(harness: GvisorHarness) -> None:
    driver = harness.new_driver()
    info = await driver.create(harness.spec())
    code, out = await sh(info, "id -u")
    assert out.strip() == "0"
    assert info.pid is not None  # the sentry: every process inside is a task of it
    fields = proc_status(info.pid)
    assert fields["Uid"].split() == ["65534"] * 4
    assert fields["Seccomp"].strip() == "2"
    assert os.readlink(f"/proc/{info.pid}/ns/user") != os.readlink("/proc/self/ns/user")
    # its capabilities (CAP_SYS_ADMIN, CAP_SYS_CHROOT, for its own chroot) hold in its own
    # user namespace only, where the host's root is not even mapped
    assert int(fields["CapEff"], 16) & ~((1 << 21) | (1 << 18)) == 0
    assert read_text(f"/proc/{info.pid}/uid_map").split()[:2] != ["0", "0"]


async def test_fork_bomb_is_bounded_inside(harness: GvisorHarness) -> None:
    """RLIMIT_NPROC, enforced by gVisor's kernel even for root: forks fail inside and the
    sandbox lives on (the host pids limit alone would kill the sentry: ``host.SENTRY_PIDS``)."""
    driver = harness.new_driver(pids_max=64)
    spec = harness.spec()
    info = await driver.create(spec)
    code, out = await sh(info, f"python3 - <<'EOF'\n{FORK_BOMB}\nEOF")
    assert code == 0, out
    ok, failed = map(int, out.split())
    assert ok < 64 and failed > 0 and ok + failed == 200
    assert (await sh(info, "echo alive"))[1].strip() == "alive"
    assert host_can_fork()


async def test_memory_limit_kills_the_sandbox_only(harness: GvisorHarness) -> None:
    """Differs from the namespace driver (docs/isolation.md): this runsc has no OOM killer of
    its own, so the host's, confined to the sandbox's memory cgroup, kills a process of the
    sentry and with it the whole sandbox; its neighbour and the host carry on, and the
    sandbox starts again from its disk."""
    driver = harness.new_driver()
    neighbour = await driver.create(harness.spec())
    spec = harness.spec(mem_mb=128)
    info = await driver.create(spec)
    assert (await sh(info, "echo kept > /root/kept"))[0] == 0
    with pytest.raises(AgentError):
        await sh(info, "python3 -c 'b = [bytearray(1 << 20) for _ in range(400)]'")

    async def gone() -> bool:
        return (await driver.inspect(spec.sandbox_id)).state is SandboxState.GONE

    await eventually(gone)
    stats = await driver.stats(spec.sandbox_id)
    assert stats.oom_kills is not None and stats.oom_kills >= 1
    assert (await sh(neighbour, "echo alive"))[1].strip() == "alive"
    assert host_can_fork()
    restarted = await driver.start(spec.sandbox_id)
    assert (await sh(restarted, "cat /root/kept"))[1].strip() == "kept"


async def test_platform_probe_is_remembered(harness: GvisorHarness) -> None:
    """The session fixture probed with ``platform=None``; a driver over that state dir reads
    the answer instead of probing again (a hanging platform costs its timeout once)."""
    first = harness.new_driver(platform=None, probe_timeout=10.0)
    assert first.platform in ("systrap", "kvm", "ptrace")
    cache = json.loads((harness.state_dir / ".platform.json").read_text())
    assert cache["platform"] == first.platform
    assert first.describe()["notes"] == cache["why"]
    again = harness.new_driver(platform=None, probe_timeout=0.001)  # would fail any probe
    assert again.platform == first.platform


# -- no sandbox needed (still in the module's sandbox tier) -----------------------------------


def test_registry_loads_gvisor() -> None:
    from voidrun_server.drivers.gvisor import GvisorDriver
    from voidrun_server.drivers.registry import load_driver_class

    assert load_driver_class("gvisor") is GvisorDriver


def test_bundle_config() -> None:
    from voidrun_server.drivers.gvisor import bundle

    spec = bundle.config(
        rootfs=Path("/r"),
        hostname="h",
        argv=["/a", "b"],
        agent_dir=Path("/agent"),
        runtime_dir=Path("/rt"),
        run_dir=Path("/run-dir"),
        pids_max=64,
    )
    process = spec["process"]
    assert isinstance(process, dict)
    assert process["args"] == ["/a", "b"] and process["noNewPrivileges"] is True
    assert process["rlimits"] == [{"type": "RLIMIT_NPROC", "hard": 64, "soft": 64}]
    assert "CAP_SYS_ADMIN" not in process["capabilities"]["bounding"]
    mounts = {m["destination"]: m for m in spec["mounts"]}  # type: ignore[attr-defined]
    assert mounts["/opt/voidrun/voidrun_agent"]["options"][1] == "ro"
    assert mounts["/opt/voidrun/runtime"]["options"][1] == "ro"
    assert mounts["/run/voidrun"]["source"] == "/run-dir"
    assert {"type": "network"} in spec["linux"]["namespaces"]  # type: ignore[index]
