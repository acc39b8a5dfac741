"""The namespace driver: the shared contract plus what is specific to this implementation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from tests.drivers.contract import sh
from tests.drivers.harness import NamespaceHarness, eventually, proc_status, read_text
from tests.support.cgroups import read_limits
from tests.support.tiers import skip_tier
from voidrun_server.drivers import (
    DriverError,
    DriverTimeoutError,
    DriverUnavailableError,
    SandboxInfo,
    SandboxSpec,
    SandboxState,
    create_driver,
    driver_names,
    load_driver_class,
)
from voidrun_server.drivers.namespace import NamespaceDriver, connect_agent_socket
from voidrun_server.drivers.namespace.cgroups import CgroupLimits, CgroupsV2, cgroup_mounts
from voidrun_server.drivers.namespace.procs import ProcessRef
from voidrun_server.drivers.namespace.seccomp import compile_bpf
from voidrun_server.drivers.namespace.state import (
    Phase,
    RunDir,
    SandboxRecord,
    read_record,
    write_record,
)

# -- sandbox tests specific to this driver (the shared contract is in test_contract.py) ----------

pytestmark_sandbox = pytest.mark.sandbox


@pytest.fixture
def harness(namespace_harness: NamespaceHarness) -> NamespaceHarness:
    return namespace_harness


@pytestmark_sandbox
async def test_layout_and_record(harness: NamespaceHarness) -> None:
    driver = harness.new_driver()
    spec = harness.spec(cpu=2, mem_mb=400)
    info = await driver.create(spec)
    run = harness.run_dir(spec.sandbox_id)
    assert info.agent_socket == run.socket
    record = read_record(run)
    assert record is not None and record.phase is Phase.RUNNING
    assert record.init is not None and record.init.pid == info.pid and record.init.alive()
    assert record.monitor is not None and record.monitor.alive()
    _check_running_layout(driver, spec, info, record)
    # stopped = only files
    await driver.stop(spec.sandbox_id)
    assert not is_mount(run.disk_mount)
    assert harness.cgroup_dirs(spec.sandbox_id) == []
    assert not record.init.alive() and not record.monitor.alive()
    assert run.disk_image.exists()


def is_mount(path: Path) -> bool:
    return os.path.ismount(path)


def _check_running_layout(
    driver: NamespaceDriver, spec: SandboxSpec, info: SandboxInfo, record: SandboxRecord
) -> None:
    run = RunDir.of(driver.state_dir, spec.sandbox_id)
    assert is_mount(run.disk_mount)
    assert json.loads(read_text(run.run / "env")) == dict(spec.env)
    # the host sees the sandbox's files owned by the shifted uid
    assert (run.upper / "etc" / "hostname").stat().st_uid == info.agent_socket_owner
    assert info.agent_socket_owner == record.uid_base
    assert read_text(run.upper / "etc" / "hostname") == f"{spec.hostname}\n"
    # limits as configured; the sandbox's pid 1 and bwrap are inside its cgroups
    assert record.monitor is not None
    for path in record.cgroups.values():
        procs = read_text(Path(path, "cgroup.procs")).split()
        assert str(info.pid) in procs and str(record.monitor.pid) in procs
    # v1: a directory per controller; v2: one "unified" group (read_limits reads either)
    expected = {"memory", "cpu", "pids", "freezer"} if driver.cgroup_version == 1 else {"unified"}
    assert expected <= set(record.cgroups), record.cgroups
    limits = read_limits(record.cgroups)
    assert (limits.cpu_quota_us, limits.cpu_period_us) == (2 * 100_000, 100_000)
    assert limits.mem_bytes == 400 << 20 and limits.no_swap
    assert limits.pids_max == 1024


@pytestmark_sandbox
async def test_agent_that_exits_fails_create_cleanly(harness: NamespaceHarness) -> None:
    driver = harness.new_driver(  # the zygote's agents: tests/drivers/test_zygote.py
        agent_argv=lambda sock: ["/bin/sh", "-c", "echo boom >&2; exit 3"], zygote=None
    )
    spec = harness.spec()
    with pytest.raises(DriverError) as err:
        await driver.create(spec)
    assert "exited before its agent became ready" in str(err.value)
    assert harness.leftovers(spec.sandbox_id) == []


@pytestmark_sandbox
async def test_agent_that_never_listens_times_out_cleanly(harness: NamespaceHarness) -> None:
    driver = harness.new_driver(
        agent_argv=lambda sock: ["/bin/sleep", "1000"],
        ready_timeout=0.5,
        env_file_option=None,
        zygote=None,
    )
    spec = harness.spec()
    with pytest.raises(DriverTimeoutError):
        await driver.create(spec)
    assert harness.leftovers(spec.sandbox_id) == []


@pytestmark_sandbox
async def test_cancelled_create_leaves_nothing(harness: NamespaceHarness) -> None:
    driver = harness.new_driver()
    spec = harness.spec()
    for delay in (0.0, 0.005, 0.02):
        with anyio.move_on_after(delay):
            await driver.create(spec)
        if (await driver.inspect(spec.sandbox_id)).state is SandboxState.RUNNING:
            await driver.destroy(spec.sandbox_id)  # the create won the race; fine
        assert harness.leftovers(spec.sandbox_id) == []


@pytestmark_sandbox
async def test_symlinked_agent_socket_is_refused(harness: NamespaceHarness) -> None:
    """A hostile sandbox replaces its socket with a symlink to a host socket."""
    driver = harness.new_driver()
    spec = harness.spec()
    info = await driver.create(spec)
    host_socket = harness.state_dir / "host.sock"
    code, out = await sh(
        info, f"ln -sf {host_socket} /run/voidrun/evil && mv -f /run/voidrun/evil /run/voidrun/x"
    )
    assert code == 0, out
    run = harness.run_dir(spec.sandbox_id)
    owner = info.agent_socket_owner
    assert owner is not None
    with pytest.raises(DriverError, match="replaced"):
        connect_agent_socket(run.run / "x", owner_uid=owner)
    connect_agent_socket(info.agent_socket, owner_uid=owner).close()


@pytestmark_sandbox
async def test_start_after_host_reboot_like_state(harness: NamespaceHarness) -> None:
    """Processes, cgroups and the mount all gone (as after a reboot): start rebuilds them."""
    driver = harness.new_driver()
    spec = harness.spec()
    info = await driver.create(spec)
    assert (await sh(info, "echo persisted > /root/p"))[0] == 0
    harness.kill_behind_back(info)
    run = harness.run_dir(spec.sandbox_id)

    async def gone() -> bool:
        return (await driver.inspect(spec.sandbox_id)).state is SandboxState.GONE

    await eventually(gone)
    await anyio.run_process(["umount", str(run.disk_mount)])
    info = await driver.start(spec.sandbox_id)
    code, out = await sh(info, "cat /root/p")
    assert (code, out.strip()) == (0, "persisted")


SERVER_SCRIPT = """
import sys, anyio
from pathlib import Path
from voidrun_server.agent_launch import agent_argv, install_agent
from voidrun_server.drivers.base import SandboxSpec
from voidrun_server.drivers.namespace import NamespaceDriver

async def main(state_dir, cgroup_parent, rootfs, sandbox_id):
    agent_dir = install_agent(Path("/var/tmp/voidrun-test-agent"))
    driver = NamespaceDriver(Path(state_dir), agent_argv=agent_argv, agent_dir=agent_dir,
                             cgroup_parent=cgroup_parent)
    info = await driver.create(SandboxSpec(sandbox_id, "survivor", Path(rootfs), 1, 256, 128))
    print(info.pid)

anyio.run(main, *sys.argv[1:])
"""


@pytestmark_sandbox
async def test_sandbox_outlives_the_server_process(harness: NamespaceHarness) -> None:
    """A server process creates a sandbox and exits; a new one re-adopts it."""
    spec = harness.spec()
    args = [str(harness.state_dir), harness.cgroup_parent, str(harness.rootfs), spec.sandbox_id]
    result = await anyio.run_process([sys.executable, "-c", SERVER_SCRIPT, *args])
    pid = int(result.stdout)
    driver = harness.new_driver()
    found = await driver.recover()
    assert found[spec.sandbox_id].state is SandboxState.RUNNING
    assert found[spec.sandbox_id].pid == pid
    code, out = await sh(found[spec.sandbox_id], "hostname")
    assert (code, out.strip()) == (0, "survivor")
    await driver.destroy(spec.sandbox_id)
    assert harness.leftovers(spec.sandbox_id) == []


@pytestmark_sandbox
async def test_spawn_without_setpriv(harness: NamespaceHarness) -> None:
    """The fallback privilege drop (Popen(user=...), fork path) builds the same sandbox."""
    driver = harness.new_driver()
    driver._host._setpriv = None  # as on a host without util-linux's setpriv
    info = await driver.create(harness.spec())
    assert info.pid is not None
    assert proc_status(info.pid)["Uid"].split() == [str(info.agent_socket_owner)] * 4
    assert (await sh(info, "id -u"))[1].strip() == "0"


@pytestmark_sandbox
async def test_concurrent_creates(harness: NamespaceHarness) -> None:
    driver = harness.new_driver()
    specs = [harness.spec() for _ in range(4)]
    async with anyio.create_task_group() as tg:
        for spec in specs:
            tg.start_soon(driver.create, spec)
    pids = set()
    for spec in specs:
        info = await driver.inspect(spec.sandbox_id)
        assert info.state is SandboxState.RUNNING
        pids.add(info.pid)
    assert len(pids) == 4
    # the worker threads stepped back out of the sandboxes' cgroups and mount namespaces
    host_mounts = os.readlink("/proc/self/ns/mnt")
    for task in os.listdir("/proc/self/task"):
        assert harness.cgroup_parent not in read_text(f"/proc/self/task/{task}/cgroup")
        assert os.readlink(f"/proc/self/task/{task}/ns/mnt") == host_mounts
    # bwrap was spawned from a small namespace: its own mounts, none of its neighbours'
    # (mountns.py: a create costs the same beside 1 or 1,000 sandboxes)
    for spec in specs:
        record = read_record(harness.run_dir(spec.sandbox_id))
        assert record is not None and record.monitor is not None
        mounts = read_text(f"/proc/{record.monitor.pid}/mountinfo")
        assert os.readlink(f"/proc/{record.monitor.pid}/ns/mnt") != host_mounts
        assert str(harness.run_dir(spec.sandbox_id).disk_mount) in mounts
        others = [s.sandbox_id for s in specs if s is not spec]
        assert not [other for other in others if other in mounts]
        assert len(mounts.splitlines()) < len(read_text("/proc/self/mountinfo").splitlines())


# -- unit tests (no sandbox) --------------------------------------------------------------------


def test_registry() -> None:
    assert {"namespace", "gvisor", "microvm"} <= set(driver_names())
    assert load_driver_class("namespace") is NamespaceDriver
    assert load_driver_class("microvm").__name__ == "MicrovmDriver"
    with pytest.raises(DriverUnavailableError) as err:
        load_driver_class("nope")
    assert err.value.hint and "namespace" in err.value.hint
    with pytest.raises(DriverUnavailableError):
        create_driver("nope")


def test_record_roundtrip(tmp_path: Path) -> None:
    run = RunDir(tmp_path / ("ab" * 12))
    run.root.mkdir()
    assert read_record(run) is None
    record = SandboxRecord(
        sandbox_id=run.sandbox_id,
        hostname="h",
        rootfs="/r",
        cpu=1,
        mem_mb=64,
        disk_mb=64,
        uid_base=100000,
        phase=Phase.PAUSED,
        cgroups={"memory": "/sys/fs/cgroup/memory/voidrun/x"},
        monitor=ProcessRef(10, 20),
        init=ProcessRef(11, 21),
    )
    write_record(run, record)
    assert read_record(run) == record
    assert [p.name for p in run.root.iterdir()] == ["state.json"]  # no temp file left
    run.state_file.write_text("{torn")
    assert read_record(run) is None
    with pytest.raises(ValueError):
        RunDir.of(tmp_path, "../../etc")


def test_process_identity_detects_pid_reuse() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        ref = ProcessRef.of(proc.pid)
        assert ref is not None and ref.alive()
        impostor = ProcessRef(proc.pid, ref.start_time + 1)  # same pid, different process
        assert not impostor.alive()
        assert impostor.kill() is False
        assert proc.poll() is None
        assert ref.kill(signal.SIGKILL)
        proc.wait()
        assert not ref.alive()
        assert ref.kill() is False
    finally:
        proc.kill()
        proc.wait()


def test_cgroup_mount_detection() -> None:
    hybrid = [
        "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory",
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct",
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw",
    ]
    v1, v2 = cgroup_mounts(hybrid)
    assert v1 == {
        "memory": Path("/sys/fs/cgroup/memory"),
        "cpu": Path("/sys/fs/cgroup/cpu,cpuacct"),
        "cpuacct": Path("/sys/fs/cgroup/cpu,cpuacct"),
    }
    assert v2 == Path("/sys/fs/cgroup/unified")
    assert cgroup_mounts(["30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw"]) == (
        {},
        Path("/sys/fs/cgroup"),
    )


def test_cgroup_v2_files(tmp_path: Path) -> None:
    """The v2 code path (this CI host is v1): which files get which values."""
    root = tmp_path / "cg"
    root.mkdir()
    cg = CgroupsV2({"unified": root}, "voidrun")
    cg.ensure_parent()
    assert (root / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert (root / "voidrun" / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    paths = cg.create("ab" * 12, CgroupLimits(cpu=2, mem_mb=256, pids_max=99))
    group = Path(paths["unified"])
    assert (group / "memory.max").read_text() == str(256 << 20)
    assert (group / "cpu.max").read_text() == "200000 100000"
    assert (group / "pids.max").read_text() == "99"
    (group / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    cg.freeze(paths, deadline=0)  # already reports frozen
    assert (group / "cgroup.freeze").read_text() == "1"
    assert cg.is_frozen(paths)
    (group / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    (group / "memory.current").write_text("4096\n")
    (group / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\n")
    (group / "pids.current").write_text("3\n")
    stats = cg.stats(paths)
    assert (stats.memory_bytes, stats.memory_limit_bytes) == (4096, 256 << 20)
    assert (stats.cpu_usage_ns, stats.pids, stats.oom_kills) == (1_500_000, 3, 1)


def test_seccomp_program_is_compiled_once() -> None:
    program = compile_bpf()
    assert program is compile_bpf()
    assert len(program) % 8 == 0 and len(program) > 100  # struct sock_filter is 8 bytes


@pytest.mark.root
def test_state_dir_must_be_reachable_by_sandbox_uid(tmp_path: Path, cgroup_parent: str) -> None:
    if os.geteuid() != 0:
        skip_tier("root", "the driver's state dir check runs as root")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    os.chmod(tmp_path, 0o700)
    with pytest.raises(DriverUnavailableError) as err:
        NamespaceDriver(
            private / "state",
            agent_argv=lambda s: ["true"],
            agent_dir=Path("/usr/lib"),
            cgroup_parent=cgroup_parent,
        )
    assert err.value.hint and "chmod" in err.value.hint


@pytestmark_sandbox
async def test_destroy_detaches_copies_of_the_disk_in_other_mount_namespaces(
    harness: NamespaceHarness,
) -> None:
    """A host process that makes a private mount namespace while a sandbox runs (``unshare
    -m``, ``ip netns exec``, a systemd unit with PrivateTmp) holds a copy of the sandbox's disk
    mount; destroy must still free the loop device and remove everything."""
    driver = harness.new_driver()
    spec = harness.spec()
    await driver.create(spec)
    run = harness.run_dir(spec.sandbox_id)
    holder = subprocess.Popen(  # noqa: ASYNC220 - starts at once; waited for by eventually()
        ["unshare", "--mount", "--propagation", "private", "sleep", "600"],
        stdin=subprocess.DEVNULL,
    )
    try:
        await eventually(lambda: _async_true(str(run.disk_mount) in _mounts_of(holder.pid)))
        await driver.destroy(spec.sandbox_id)
        assert harness.leftovers(spec.sandbox_id) == []
        assert str(run.disk_mount) not in _mounts_of(holder.pid)  # the copy was detached
        assert holder.poll() is None  # and the process that held it was left alone
    finally:
        holder.kill()
        holder.wait()


def _mounts_of(pid: int) -> str:
    try:
        return read_text(f"/proc/{pid}/mountinfo")
    except OSError:
        return ""


async def _async_true(value: bool) -> bool:
    return value
