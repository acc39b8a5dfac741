"""The ``gvisor`` driver: the whole driver contract, its platform choice, and escapes that
must fail inside gVisor (its own kernel, no host files or processes, limits, loopback only).

A host without runsc fails this module as a ``sandbox`` tier skip (CI installs runsc through
scripts/install-system-deps.sh). The platform is probed once per session
(``gvisor_platform``); each test's driver is told the answer, so a platform that hangs here
(kvm on a PVM host) costs its probe timeout once.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.drivers.contract import DriverContract
from tests.drivers.gvisor_harness import GvisorHarness
from tests.drivers.harness import mountinfo_lines
from tests.support.hostleaks import new_state_dir, track
from tests.support.tiers import skip_tier
from voidrun_server.drivers.base import DriverUnavailableError

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
