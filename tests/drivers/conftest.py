"""Fixtures for driver tests: a real image, a real state directory, real cgroups.

These tests start real sandboxes, so they need root, user namespaces, cgroups and loop devices;
without them they are a ``sandbox`` tier skip (tests/support/tiers.py) naming what is missing.
The image is the project's ``code`` image built by ``build_code_image`` (cached in
``$VOIDRUN_TEST_IMAGES_DIR``, default ``/var/tmp/voidrun-test-images``; the first build takes a
few minutes). Every sandbox a test creates is destroyed at teardown, and the test fails if
anything of it is left on the host.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.drivers.harness import DriverHarness, NamespaceHarness, mountinfo_lines
from tests.support.hostleaks import new_state_dir, purge_state_dir, track
from tests.support.images import CODE_TAG, IMAGES_DIR
from tests.support.tiers import skip_if_opted_out, skip_tier
from voidrun_server.drivers.base import DriverUnavailableError

IMAGE_BUILD_TIMEOUT = 1800


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "driver tests need root"
    try:
        from voidrun_server.drivers.namespace import check_host

        check_host()
    except DriverUnavailableError as exc:
        return f"{exc.message} ({exc.hint})"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The first image build takes minutes: give only the first sandbox test that much time."""
    from voidrun_server.images.build import CODE_IMAGE_NAME, find_built_image

    if find_built_image(IMAGES_DIR, CODE_IMAGE_NAME, CODE_TAG) is not None:
        return
    for item in items:
        if "sandbox" in item.keywords and "tests/drivers" in str(item.path):
            item.add_marker(pytest.mark.timeout(IMAGE_BUILD_TIMEOUT))
            return


@pytest.fixture(scope="session")
def namespace_rootfs() -> Path:
    skip_if_opted_out("sandbox")
    reason = _unavailable()
    if reason:
        skip_tier("sandbox", reason)
    from voidrun_server.images.build import build_code_image

    IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    return build_code_image(IMAGES_DIR, tag=CODE_TAG).rootfs


@pytest.fixture(scope="session")
def cgroup_parent() -> Iterator[str]:
    """A parent group of our own, so tests never touch a real server's ``voidrun`` groups."""
    name = f"voidrun-test-{secrets.token_hex(4)}"
    yield name
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        parent = hierarchy / name
        if parent.is_dir():
            leftover = [p.name for p in parent.iterdir() if p.is_dir()]
            assert not leftover, f"sandbox cgroups left behind in {parent}: {leftover}"
            parent.rmdir()


@pytest.fixture
def state_dir(cgroup_parent: str) -> Iterator[Path]:
    """bwrap runs as the sandbox uid and must traverse it: not pytest's 0700 tmp_path. Torn
    down with ``purge`` (whatever a failed test left), after checking the test left no mount."""
    path = new_state_dir("voidrun-drivers-")
    track(path, cgroup_parent=cgroup_parent)
    yield path
    mounted = [line for line in mountinfo_lines() if str(path) in line]
    purge_state_dir(path, cgroup_parent)
    shutil.rmtree(path)
    assert not mounted, f"mounts left under {path}: {mounted}"


# one entry per driver with a harness fixture; "namespace_exec" is the namespace driver with
# VOIDRUN_AGENT_ZYGOTE=false (an interpreter started in every sandbox)
DRIVER_HARNESSES = ["namespace", "namespace_exec"]


@pytest.fixture(params=DRIVER_HARNESSES)
def harness(request: pytest.FixtureRequest) -> DriverHarness:
    """The contract suite's view of each driver (``<name>_harness`` fixtures)."""
    found: DriverHarness = request.getfixturevalue(f"{request.param}_harness")
    return found


@pytest.fixture
async def namespace_harness(
    namespace_rootfs: Path, state_dir: Path, cgroup_parent: str
) -> AsyncIterator[NamespaceHarness]:
    """A harness whose sandboxes are all destroyed, and checked to be gone, at teardown."""
    async for harness in _harness(NamespaceHarness(state_dir, namespace_rootfs, cgroup_parent)):
        yield harness


@pytest.fixture
async def namespace_exec_harness(
    namespace_rootfs: Path, state_dir: Path, cgroup_parent: str
) -> AsyncIterator[NamespaceHarness]:
    harness = NamespaceHarness(state_dir, namespace_rootfs, cgroup_parent, forked=False)
    async for found in _harness(harness):
        yield found


async def _harness(harness: NamespaceHarness) -> AsyncIterator[NamespaceHarness]:
    try:
        yield harness
        await _destroy_all(harness)
    finally:
        for driver in harness.drivers:
            driver.close()


async def _destroy_all(harness: NamespaceHarness) -> None:
    driver = harness.drivers[0] if harness.drivers else None
    if driver is None:
        return
    found = await driver.recover()
    for sandbox_id in found:
        await driver.destroy(sandbox_id)
    for sandbox_id in found:
        assert harness.leftovers(sandbox_id) == []
