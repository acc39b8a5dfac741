"""The microvm driver: the driver contract (``contract.py``) and isolation checks, on QEMU
guests (TCG on hosts whose /dev/kvm cannot boot a stock kernel, as this project's machines).

CI budget: creates are clones of one snapshot template per shape (``clones.py``), kept in the
shared test cache across runs: the first run cold-boots each shape once (about 10-20 s under
TCG), later creates take well under a second. The isolation checks share one module-scoped VM.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from tests.drivers.contract import DriverContract, sh
from tests.drivers.microvm_harness import MicrovmHarness, qemu_missing
from tests.support.hostleaks import new_state_dir
from tests.support.tiers import skip_if_opted_out, skip_tier
from voidrun_server.agentclient import AgentClient
from voidrun_server.drivers.base import SandboxInfo, SandboxState
from voidrun_server.drivers.microvm import MicrovmDriver

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def microvm_rootfs(namespace_rootfs: Path) -> Path:
    skip_if_opted_out("sandbox")
    reason = qemu_missing()
    if reason:
        skip_tier("sandbox", reason)
    return namespace_rootfs


@pytest.fixture(scope="module")
def microvm_cgroup_parent() -> Iterator[str]:
    name = f"voidrun-test-mvm-{secrets.token_hex(4)}"
    yield name
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        parent = hierarchy / name
        if parent.is_dir():
            leftover = [p.name for p in parent.iterdir() if p.is_dir()]
            assert not leftover, f"VM cgroups left behind in {parent}: {leftover}"
            parent.rmdir()


async def _teardown(harness: MicrovmHarness) -> None:
    if not harness.drivers:
        return
    driver = harness.drivers[0]
    found = await driver.recover()
    for sandbox_id in found:
        await driver.destroy(sandbox_id)
    for sandbox_id in found:
        assert harness.leftovers(sandbox_id) == []


@pytest.fixture
async def microvm_harness(
    microvm_rootfs: Path, microvm_cgroup_parent: str
) -> AsyncIterator[MicrovmHarness]:
    state = new_state_dir("voidrun-microvm-")
    harness = MicrovmHarness(state, microvm_rootfs, microvm_cgroup_parent)
    try:
        yield harness
        await _teardown(harness)
    finally:
        shutil.rmtree(state, ignore_errors=True)


class TestMicrovmContract(DriverContract):
    @pytest.fixture
    def harness(self, microvm_harness: MicrovmHarness) -> MicrovmHarness:
        return microvm_harness


# -- isolation: one VM for the module ------------------------------------------------------

MEM_MB, DISK_MB = 256, 64


@pytest.fixture(scope="module")
def vm(microvm_rootfs: Path, microvm_cgroup_parent: str) -> Iterator[tuple[SandboxInfo, str]]:
    """(info, accelerator) of one running VM, destroyed at the end of the module."""
    state = new_state_dir("voidrun-microvm-iso-")
    harness = MicrovmHarness(state, microvm_rootfs, microvm_cgroup_parent)
    try:
        driver = harness.new_driver()
        spec = harness.spec(mem_mb=MEM_MB, disk_mb=DISK_MB)
        info = anyio.run(driver.create, spec)
        yield info, driver.describe()["kernel"]
    finally:
        anyio.run(_teardown, harness)
        shutil.rmtree(state, ignore_errors=True)


def run(vm: tuple[SandboxInfo, str], command: str) -> tuple[int, str]:
    return anyio.run(sh, vm[0], command)


def test_guest_kernel_is_not_the_hosts(vm: tuple[SandboxInfo, str]) -> None:
    code, out = run(vm, "uname -r; dmesg | grep -m1 'Linux version'")
    assert code == 0, out
    release, banner = out.splitlines()[:2]
    assert release == vm[1] != os.uname().release
    assert release in banner


def test_host_files_and_processes_are_invisible(vm: tuple[SandboxInfo, str]) -> None:
    secret = secrets.token_hex(16)  # in the host file's content, never in a command we send
    marker = Path("/tmp") / f"voidrun-host-marker-{secrets.token_hex(4)}"
    marker.write_text(secret)
    # a host process whose argv[0] matches the pattern below (the pattern itself does not)
    name = f"voidrun-proc-marker-{secrets.token_hex(8)}"
    sleeper = subprocess.Popen(["sh", "-c", "sleep 300", name], stdout=subprocess.DEVNULL)
    try:
        code, out = run(vm, f"cat {marker} /etc/hostname 2>&1")
        assert secret not in out and "No such file" in out, out
        pattern = "voidrun-proc-marker-[0-9a-f]\\{16\\}"
        # 2>/dev/null: a guest process may exit between the glob and its read
        listing = f"cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ' | grep -c '{pattern}'"
        code, out = run(vm, listing)
        assert out.strip() == "0", out
        assert name in Path(f"/proc/{sleeper.pid}/cmdline").read_text()  # it is there
    finally:
        sleeper.kill()
        sleeper.wait()
        marker.unlink()


def test_memory_is_the_vms(vm: tuple[SandboxInfo, str]) -> None:
    code, out = run(vm, "awk '/MemTotal/ {print $2}' /proc/meminfo")
    assert code == 0 and int(out) <= MEM_MB * 1024, out
    code, out = run(vm, "python3 -c 'b = bytearray(400 << 20); print(len(b))'")
    assert code != 0, out  # OOM-killed (or MemoryError) inside the guest
    assert run(vm, "echo alive") == (0, "alive\n")  # the agent survived


def test_disk_full_is_enospc(vm: tuple[SandboxInfo, str]) -> None:
    code, out = run(vm, f"dd if=/dev/zero of=/root/fill bs=1M count={DISK_MB * 2} 2>&1")
    assert code != 0 and "No space left on device" in out, out
    assert run(vm, "rm -f /root/fill; echo ok") == (0, "ok\n")


def test_no_network_but_loopback(vm: tuple[SandboxInfo, str]) -> None:
    code, out = run(vm, "ls /sys/class/net")
    assert (code, out.split()) == (0, ["lo"])
    code, out = run(vm, "cat /sys/class/net/lo/operstate; hostname")
    assert code == 0 and out.split()[1] == "sbx-test", out


async def test_reconnect_starts_a_fresh_session(microvm_harness: MicrovmHarness) -> None:
    """The services hold one connection per sandbox and reconnect after a restart: the agent
    must serve each host connection as a new session, however fast it comes back."""
    driver: MicrovmDriver = microvm_harness.new_driver()
    spec = microvm_harness.spec()
    info = await driver.create(spec)
    for i in range(5):
        assert await sh(info, f"echo {i}") == (0, f"{i}\n")
    assert (await driver.inspect(spec.sandbox_id)).state is SandboxState.RUNNING
    assert driver.describe()["accelerator"] in ("kvm", "tcg")


# -- snapshot clones ------------------------------------------------------------------------

PROBE = (
    "hostname; echo $WHO; cat /proc/sys/kernel/random/boot_id; "
    "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s; ls /root"
)


def _is_clone(pid: int) -> bool:
    """QEMU restored a template's state (a cold boot has ``-kernel`` instead)."""
    return b"-incoming" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


async def test_clones_of_one_template_share_nothing(microvm_harness: MicrovmHarness) -> None:
    """Two clones of the same template: each has its own name, environment, kernel randomness
    (boot_id, /dev/urandom: the template's CRNG state is reseeded in each), wall clock and
    disk; what one writes the other never sees."""
    driver = microvm_harness.new_driver()
    specs = [microvm_harness.spec(hostname=f"clone-{who}", env={"WHO": who}) for who in ("a", "b")]
    infos = [await driver.create(spec) for spec in specs]
    assert all(info.pid is not None and _is_clone(info.pid) for info in infos)
    assert (await sh(infos[0], "echo only-a > /root/secret-a; sync"))[0] == 0
    seen = []
    for who, info in zip("ab", infos, strict=True):
        code, out = await sh(info, PROBE)
        assert code == 0, out
        hostname, env, boot_id, random_hex, clock, *files = out.split()
        assert (hostname, env) == (f"clone-{who}", who)
        assert abs(int(clock) - time.time()) < 120  # not the template's frozen clock
        seen.append((boot_id, random_hex))
        assert files == (["secret-a"] if who == "a" else []), files
    assert seen[0][0] != seen[1][0] and seen[0][1] != seen[1][1], seen
    disks = [microvm_harness.run_dir(spec.sandbox_id).disk for spec in specs]
    assert os.stat(disks[0]).st_ino != os.stat(disks[1]).st_ino
    await driver.stop(specs[0].sandbox_id)  # after the guest's sync: its file is complete
    assert microvm_harness.read_writable(specs[0].sandbox_id, "root/secret-a") == b"only-a\n"
    assert microvm_harness.read_writable(specs[1].sandbox_id, "root/secret-a") is None


async def test_retarget_while_the_main_port_is_held(microvm_harness: MicrovmHarness) -> None:
    """The warm pool's hand-out: the services hold the agent's main port while the driver
    renames the VM over the control port. Name and environment apply at once, the RAM (fixed
    at boot) at the next boot, a cold boot from the clone's own disk."""
    driver = microvm_harness.new_driver()
    spec = microvm_harness.spec(hostname="sandbox", env={})
    info = await driver.create(spec)
    async with AgentClient(info.agent_socket, owner_uid=info.agent_socket_owner) as held:
        await driver.retarget(
            spec.sandbox_id, hostname="handed-out", cpu=1, mem_mb=320, env={"WHO": "caller"}
        )
        done = await held.exec("hostname; echo $WHO; cat /run/voidrun/env.json; echo x > /root/f")
        assert done.stdout_text.split() == ["handed-out", "caller", '{"WHO":"caller"}']
        await held.exec("sync")
    assert (await driver.stats(spec.sandbox_id)).memory_limit_bytes == MEM_MB << 20
    await driver.stop(spec.sandbox_id)
    restarted = await driver.start(spec.sandbox_id)
    code, out = await sh(
        restarted, "hostname; echo $WHO; cat /root/f; awk '/MemTotal/ {print $2}' /proc/meminfo"
    )
    name, who, kept, mem_kib = out.split()
    assert (code, name, who, kept) == (0, "handed-out", "caller", "x")
    assert MEM_MB * 1024 < int(mem_kib) <= 320 * 1024
    assert (await driver.stats(spec.sandbox_id)).memory_limit_bytes == 320 << 20
