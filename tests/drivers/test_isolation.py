"""Escapes that must fail: every isolation promise of the namespace driver, tested for real.

Commands run inside through the real agent, so they carry exactly the restrictions a user's
code gets (namespaces, capabilities, seccomp, cgroups). Each test creates its own sandbox; the
harness destroys it and checks nothing is left.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.drivers.contract import sh
from tests.drivers.harness import (
    NamespaceHarness,
    eventually,
    host_can_fork,
    proc_status,
    read_text,
)
from voidrun_server.drivers.base import SandboxInfo, SandboxSpec
from voidrun_server.drivers.namespace import NamespaceDriver
from voidrun_server.drivers.namespace.bwrap import DEFAULT_CAPS
from voidrun_server.drivers.namespace.state import read_record

pytestmark = pytest.mark.sandbox


@pytest.fixture
def harness(namespace_harness: NamespaceHarness) -> NamespaceHarness:
    return namespace_harness


EPERM, ENOSYS = 1, 38

SYSCALL_PROBE = textwrap.dedent(
    """
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    buf = ctypes.create_string_buffer(4096)

    def call(nr, *args):
        ctypes.set_errno(0)
        conv = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
        return libc.syscall(nr, *conv), ctypes.get_errno()

    # Each call would succeed (or fail differently) without the seccomp filter.
    probes = {
        "keyctl": (250, 0, -3, 0),  # KEYCTL_GET_KEYRING_ID(session keyring)
        "add_key": (248, b"user", b"k", b"v", 1, -3),
        "request_key": (249, b"user", b"k", 0, 0),
        "bpf": (321, 0, buf, 64),
        "userfaultfd": (323, 1),  # UFFD_USER_MODE_ONLY: allowed to anyone otherwise
        "perf_event_open": (298, buf, 0, -1, -1, 0),
        "ptrace": (101, 0, 0, 0, 0),  # PTRACE_TRACEME: always allowed otherwise
        "process_vm_readv": (310, 1, buf, 1, buf, 1, 0),
        "kcmp": (312, 1, 1, 0, 0, 0),
        "unshare_newuser": (272, 0x10000000),  # allowed to anyone otherwise
        "clone_newuser": (56, 0x10000000 | 17, 0, 0, 0, 0),
        "setns": (308, 0, 0),
        "mount": (165, b"none", b"/mnt", b"tmpfs", 0, 0),
        "umount2": (166, b"/proc", 0),
        "pivot_root": (155, b"/", b"/"),
        "open_tree": (428, -100, b"/", 1),
        "fsopen": (430, b"tmpfs", 0),
        "init_module": (175, buf, 16, b""),
        "finit_module": (313, 0, b"", 0),
        "delete_module": (176, b"loop", 0),
        "kexec_load": (246, 0, 0, 0, 0),
        "name_to_handle_at": (303, -100, b"/", buf, buf, 0),
        "open_by_handle_at": (304, -100, buf, 0),
        "reboot": (169, 0, 0, 0, 0),
        "swapon": (167, b"/x", 0),
        "acct": (163, 0),
        "settimeofday": (164, 0, 0),
        "clock_settime": (227, 0, buf),
        "iopl": (172, 3),
        "ioperm": (173, 0, 1, 1),
        "socket_vsock": (41, 40, 1, 0),
        "clone3": (435, buf, 88),
        "io_uring_setup": (425, 1, buf),
    }
    for name, (nr, *args) in probes.items():
        print(name, *call(nr, *args))
    """
)


async def create(
    harness: NamespaceHarness, **overrides: Any
) -> tuple[NamespaceDriver, SandboxSpec, SandboxInfo]:
    driver = harness.new_driver(**overrides)
    spec = harness.spec()
    return driver, spec, await driver.create(spec)


async def python(info: SandboxInfo, code: str) -> tuple[int, str]:
    return await sh(info, f"python3 - <<'PYEOF'\n{code}\nPYEOF")


async def test_seccomp_blocks_escape_syscalls(harness: NamespaceHarness) -> None:
    _, _, info = await create(harness)
    code, out = await python(info, SYSCALL_PROBE)
    assert code == 0, out
    results = {name: (int(r), int(e)) for name, r, e in (line.split() for line in out.splitlines())}
    enosys = {"clone3", "io_uring_setup"}
    for name, (ret, err) in results.items():
        expected = ENOSYS if name in enosys else EPERM
        assert (ret, err) == (-1, expected), f"{name} returned {ret} errno {err}"
    assert len(results) == 33


async def test_cannot_read_host_files(harness: NamespaceHarness) -> None:
    secret_dir = harness.state_dir / "host-secrets"
    secret_dir.mkdir()
    (secret_dir / "secret").write_text("top secret\n")
    _, spec, info = await create(harness)
    code, out = await sh(info, f"cat {secret_dir}/secret; ls {harness.state_dir}")
    assert code != 0 and "top secret" not in out
    code, out = await sh(info, "cat /etc/hostname")
    assert out.strip() == spec.hostname != read_text("/etc/hostname").strip()
    code, out = await sh(info, "ls /sys 2>&1; ls /dev")
    assert "kernel" not in out and "vda" not in out and "loop" not in out


async def test_symlinks_resolve_inside_the_sandbox(harness: NamespaceHarness) -> None:
    host_dir = harness.state_dir / "host-side"
    host_dir.mkdir()
    (host_dir / "existing").write_text("host data\n")
    _, _, info = await create(harness)
    code, out = await sh(
        info,
        f"ln -s {host_dir}/existing /root/l1; cat /root/l1; "
        f"mkdir -p {host_dir}; ln -s {host_dir}/target /root/l2; echo pwned > /root/l2; "
        f"ln -s {host_dir}/existing /root/l3; echo pwned > /root/l3; cat {host_dir}/existing",
    )
    assert "host data" not in out
    assert not (host_dir / "target").exists()
    assert (host_dir / "existing").read_text() == "host data\n"
    assert sorted(p.name for p in host_dir.iterdir()) == ["existing"]


def spawn_host_process() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "marker-host"])


async def test_processes_are_invisible_and_unkillable(harness: NamespaceHarness) -> None:
    host = spawn_host_process()
    try:
        driver, _, info_a = await create(harness)
        spec_b = harness.spec()
        info_b = await driver.create(spec_b)
        code, out = await sh(info_b, "nohup sh -c 'sleep 600' marker-other >/dev/null 2>&1 &")
        assert code == 0, out
        code, out = await sh(
            info_a,
            "grep -l marker /proc/[0-9]*/cmdline 2>/dev/null;"
            " ls -d /proc/[0-9]* 2>/dev/null | wc -l",
        )
        assert "marker" not in out
        assert int(out.split()[-1]) <= 6  # pid 1, agent, bash (+ a subshell), grep/ls, wc
        code, out = await sh(info_a, f"kill -9 {host.pid} {info_b.pid}")
        assert code != 0
        assert host.poll() is None
        assert (await driver.inspect(spec_b.sandbox_id)).pid == info_b.pid
        code, out = await sh(info_a, "cat /proc/1/cmdline | tr '\\0' ' '")
        if harness.forked:  # pid 1 holds the sandbox open for its agent (agent/zygote.py)
            assert out.split()[-1].endswith("/bin/cat"), out
        else:
            assert "voidrun_agent" in out  # pid 1 is the sandbox's own agent
    finally:
        host.kill()
        host.wait()


def host_ipc_objects() -> tuple[str, Path]:
    """A SysV shared memory segment and a /dev/shm file on the host."""
    out = subprocess.run(["ipcmk", "-M", "4096"], capture_output=True, text=True, check=True)
    marker = Path("/dev/shm") / f"voidrun-test-{os.getpid()}"
    marker.write_text("host")
    return out.stdout.split()[-1], marker  # "Shared memory id: N"


def remove_host_ipc_objects(shm_id: str, marker: Path) -> None:
    subprocess.run(["ipcrm", "-m", shm_id], check=True)
    marker.unlink()


async def test_ipc_and_shm_are_private(harness: NamespaceHarness) -> None:
    shm_id, marker = host_ipc_objects()
    try:
        _, _, info = await create(harness)
        assert await sh(info, "ls -A /dev/shm") == (0, "")
        code, out = await sh(info, "ipcs -m | grep -c '^0x'")
        assert out.strip() == "0", out
    finally:
        remove_host_ipc_objects(shm_id, marker)


async def test_network_is_loopback_only(harness: NamespaceHarness) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        _, _, info = await create(harness)
        code, out = await python(
            info,
            f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=3)
    print("REACHED HOST")
except OSError as exc:
    print("refused", type(exc).__name__)
try:
    socket.create_connection(("10.0.2.2", 80), timeout=3)
    print("REACHED OUTSIDE")
except OSError as exc:
    print("unreachable", exc.errno)
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
socket.create_connection(srv.getsockname(), timeout=3).close()
print("loopback ok")
print(open("/proc/net/dev").read())
""",
        )
    assert code == 0, out
    assert "REACHED" not in out
    assert "refused ConnectionRefusedError" in out and "loopback ok" in out
    interfaces = [line.split(":")[0].strip() for line in out.splitlines() if ":" in line]
    assert interfaces == ["lo"]


async def test_mount_and_nested_namespaces_fail(harness: NamespaceHarness) -> None:
    _, _, info = await create(harness)
    code, out = await sh(info, "mount -t tmpfs none /mnt")
    assert code != 0
    code, out = await sh(info, "unshare -U true || unshare -Ur true")
    assert code != 0
    code, out = await sh(info, "mount | grep -c ' /mnt '")
    assert out.strip() == "0"


async def test_root_inside_is_unprivileged_outside(harness: NamespaceHarness) -> None:
    driver, spec, info = await create(harness)
    code, out = await sh(info, "id -u; nohup sleep 600 >/dev/null 2>&1 & echo $!")
    assert out.split()[0] == "0"
    assert info.pid is not None
    fields = proc_status(info.pid)
    base = info.agent_socket_owner
    assert base is not None
    assert fields["Uid"].split() == [str(base)] * 4
    assert fields["Gid"].split() == [str(base)] * 4
    expected_caps = 0
    for cap in DEFAULT_CAPS:
        expected_caps |= 1 << _CAP_BITS[cap]
    full = int(proc_status(os.getpid())["CapBnd"], 16)
    assert int(fields["CapEff"], 16) == expected_caps != full
    assert int(fields["CapBnd"], 16) == expected_caps
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"
    # every process of the sandbox, seen from the host, runs in the sandbox's uid range
    for pid in _sandbox_pids(harness, spec.sandbox_id, info):
        uid = int(proc_status(pid)["Uid"].split()[0])
        assert base <= uid < base + 65536


async def test_memory_limit_kills_inside_only(harness: NamespaceHarness) -> None:
    driver = harness.new_driver()
    spec = harness.spec(mem_mb=128)
    info = await driver.create(spec)
    code, out = await python(
        info, "b = [bytearray(1 << 20) for _ in range(400)]; print('ALI' + 'VE')"
    )
    assert code in (137, -9), out
    assert "ALIVE" not in out and "Killed" in out
    assert (await sh(info, "echo agent-survived"))[1].strip() == "agent-survived"
    stats = await driver.stats(spec.sandbox_id)
    assert stats.oom_kills is not None and stats.oom_kills >= 1
    assert stats.memory_bytes is not None and stats.memory_bytes <= 128 << 20
    assert host_can_fork()  # the host did not notice


async def test_fork_bomb_is_bounded(harness: NamespaceHarness) -> None:
    driver = harness.new_driver(pids_max=64)
    spec = harness.spec()
    info = await driver.create(spec)
    code, out = await python(
        info,
        """
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
""",
    )
    assert code == 0, out
    ok, failed = map(int, out.split())
    assert ok < 64 and failed > 0 and ok + failed == 200
    stats = await driver.stats(spec.sandbox_id)
    assert stats.pids is not None and stats.pids <= 64
    assert host_can_fork()
    await driver.stop(spec.sandbox_id)  # kills the whole bounded bomb


def allocated_bytes(path: Path) -> int:
    """What a (sparse) file really costs the host filesystem."""
    return path.stat().st_blocks * 512


async def test_disk_limit_is_enospc_inside(harness: NamespaceHarness) -> None:
    driver = harness.new_driver()
    spec = harness.spec(disk_mb=64)
    info = await driver.create(spec)
    code, out = await sh(info, "dd if=/dev/zero of=/root/big bs=1M count=200 2>&1; sync")
    assert "No space left on device" in out
    code, out = await sh(info, "df -m / | tail -1")
    assert int(out.split()[1]) <= 64
    # Everything the sandbox can write lives in its image, and the image cannot outgrow the
    # limit: that bounds what the sandbox costs the host (measuring the host's free space
    # instead would be flaky while anything else writes to that filesystem).
    image = harness.run_dir(spec.sandbox_id).disk_image
    assert allocated_bytes(image) <= 64 << 20
    # deleting inside gives the space back to the host (online discard punches holes)
    assert (await sh(info, "rm /root/big && sync"))[0] == 0

    async def shrunk() -> bool:
        return allocated_bytes(image) < 32 << 20

    await eventually(shrunk, seconds=30)


def _sandbox_pids(harness: NamespaceHarness, sandbox_id: str, info: SandboxInfo) -> list[int]:
    record = read_record(harness.run_dir(sandbox_id))
    assert record is not None
    pids: set[int] = set()
    for path in record.cgroups.values():
        pids.update(int(p) for p in read_text(Path(path, "cgroup.procs")).split())
    assert info.pid in pids
    return sorted(pids)


_CAP_BITS = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_RAW": 13,
    "CAP_SYS_CHROOT": 18,
    "CAP_MKNOD": 27,
    "CAP_AUDIT_WRITE": 29,
    "CAP_SETFCAP": 31,
}
