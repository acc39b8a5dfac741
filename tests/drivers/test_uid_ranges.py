"""Every sandbox has its own host uid range, and the shared image stays shared and unchanged.

Real sandboxes (root). What each test proves:

* two sandboxes get disjoint 65,536-id ranges, outside /etc/subuid-style reservations (an
  injected file), and a destroyed sandbox's range is handed out again;
* the kernel's per-user counters are per sandbox: one sandbox exhausting inotify instances
  does not stop another from creating one;
* the image (shifted to 100000+N on disk) reads as root-owned inside each sandbox through the
  idmapped mount, files written inside belong to that sandbox's range on the host, and the
  image directory itself is never changed by a write to /etc (overlay copy-up);
* CAP_NET_RAW is gone and RLIMIT_CORE is 0 (hard) for everything inside;
* the image view is unmounted on stop and mounted again on start, and survives a restart.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.drivers.contract import sh
from tests.drivers.harness import NamespaceHarness, mountinfo_lines, proc_status, read_text
from voidrun_server.drivers.base import SandboxInfo
from voidrun_server.drivers.namespace.idmount import is_mount_point
from voidrun_server.drivers.namespace.uidrange import IMAGE_UID_BASE, RANGE_SIZE, parse_subid

pytestmark = pytest.mark.sandbox

CAP_NET_RAW = 13


@pytest.fixture
def harness(namespace_harness: NamespaceHarness) -> NamespaceHarness:
    return namespace_harness


def host_range(info: SandboxInfo) -> tuple[int, int]:
    """(first host uid, count) of the sandbox, from its pid 1's uid_map as the host sees it."""
    assert info.pid is not None
    with open(f"/proc/{info.pid}/uid_map") as f:
        inside, outside, count = (int(x) for x in f.read().split())
    assert inside == 0
    return outside, count


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[0] + b[1] and b[0] < a[0] + a[1]


async def test_each_sandbox_has_its_own_range_outside_subuid(
    harness: NamespaceHarness, tmp_path: Path
) -> None:
    probe = harness.new_driver()
    first = probe.uid_ranges.first
    # A host user whose subordinate range covers the start of the area (by name and by id).
    subuid = tmp_path / "subuid"
    subuid.write_text(f"# comment\nalice:{first}:{RANGE_SIZE * 2}\n")
    subgid = tmp_path / "subgid"
    subgid.write_text(f"1001:{first + RANGE_SIZE * 2 + 5}:10\nbroken line\n")
    driver = harness.new_driver(subid_files=(subuid, subgid))
    spec_a, spec_b = harness.spec(), harness.spec()
    info_a = await driver.create(spec_a)
    info_b = await driver.create(spec_b)
    range_a, range_b = host_range(info_a), host_range(info_b)
    assert range_a[1] == range_b[1] == RANGE_SIZE
    assert not overlaps(range_a, range_b)
    assert (info_a.agent_socket_owner, info_b.agent_socket_owner) == (range_a[0], range_b[0])
    reserved = [*parse_subid(subuid), *parse_subid(subgid), (IMAGE_UID_BASE, RANGE_SIZE)]
    for sandbox_range in (range_a, range_b):
        assert sandbox_range[0] >= first
        for taken in reserved:
            assert not overlaps(sandbox_range, taken), (sandbox_range, taken)
    # inside, root is root; on the host every process of A runs in A's range
    assert (await sh(info_a, "cat /proc/self/uid_map"))[1].split() == ["0", str(range_a[0])] + [
        str(RANGE_SIZE)
    ]
    assert proc_status(info_a.pid or 0)["Uid"].split() == [str(range_a[0])] * 4
    # A's range is free again once A is destroyed, and nobody else got it meanwhile
    await driver.destroy(spec_a.sandbox_id)
    spec_c = harness.spec()
    info_c = await driver.create(spec_c)
    assert host_range(info_c) == range_a
    assert host_range(info_b) == range_b
    # the reused range's image view (its idmap namespace is kept for reuse) is still root's
    status, out = await sh(info_c, "stat -c '%u %g' /etc/passwd /usr/bin; touch /root/c; id -u")
    assert (status, out.split()) == (0, ["0", "0", "0", "0", "0"])


async def test_inotify_exhaustion_stays_inside_one_sandbox(harness: NamespaceHarness) -> None:
    driver = harness.new_driver()
    info_a = await driver.create(harness.spec())
    info_b = await driver.create(harness.spec())
    limit = int(read_text("/proc/sys/fs/inotify/max_user_instances"))
    hog = (
        "import ctypes, os, time\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "n = 0\n"
        f"while n < {limit + 10}:\n"
        "    if libc.inotify_init1(0) < 0:\n"
        "        break\n"
        "    n += 1\n"
        "print(n, ctypes.get_errno(), flush=True)\n"
    )
    # A holds every instance it could get (the background python keeps them open) ...
    code, out = await sh(
        info_a,
        f"cat > /tmp/hog.py <<'EOF'\n{hog}EOF\n"
        "nohup python3 -c \"exec(open('/tmp/hog.py').read()); import time; time.sleep(600)\" "
        "> /tmp/hog.out 2>&1 &\n"
        "for i in $(seq 200); do [ -s /tmp/hog.out ] && break; sleep 0.05; done; cat /tmp/hog.out",
    )
    assert code == 0, out
    opened, errno_ = (int(x) for x in out.split())
    assert opened < limit + 10 and errno_ == 24, out  # EMFILE: A hit the per-user limit
    # ... and B can still create one
    code, out = await sh(
        info_b,
        "python3 -c 'import ctypes; print(ctypes.CDLL(None).inotify_init1(0) >= 0)'",
    )
    assert (code, out.strip()) == (0, "True"), out


def tree_digest(root: Path, below: str) -> str:
    """Names, owners, modes and contents of everything under ``root/below``."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root / below):
        dirnames.sort()
        for name in sorted(filenames + dirnames):
            path = Path(dirpath, name)
            st = path.lstat()
            digest.update(f"{path} {st.st_uid} {st.st_gid} {st.st_mode} {st.st_size}\n".encode())
            if path.is_file() and not path.is_symlink():
                digest.update(path.read_bytes())
    return digest.hexdigest()


async def test_image_is_root_owned_inside_and_never_written(harness: NamespaceHarness) -> None:
    driver = harness.new_driver()
    spec = harness.spec()
    before = tree_digest(harness.rootfs, "etc")
    info = await driver.create(spec)
    base = info.agent_socket_owner
    assert base is not None and base != IMAGE_UID_BASE
    code, out = await sh(info, "stat -c '%u %g %n' / /etc /etc/passwd /usr/bin/python3")
    assert code == 0, out
    assert [line.split()[:2] for line in out.splitlines()] == [["0", "0"]] * 4
    code, out = await sh(info, "ls -ln /etc/apt | head -3; stat -c '%u' /var/cache/apt")
    assert code == 0, out
    # apt's unprivileged user exists and can be dropped to
    code, out = await sh(info, "setpriv --reuid=_apt --regid=nogroup --clear-groups id -u")
    assert (code, out.strip()) == (0, "42"), out
    code, out = await sh(
        info,
        "echo changed >> /etc/passwd && echo new > /etc/new-file && chown 42:42 /etc/new-file "
        "&& mkdir /root/made && id -u",
    )
    assert (code, out.strip()) == (0, "0"), out
    upper = harness.run_dir(spec.sandbox_id).upper
    assert (upper / "etc" / "passwd").stat().st_uid == base  # copied up, owned by its root
    assert (upper / "etc" / "new-file").stat().st_uid == base + 42
    assert (upper / "root" / "made").stat().st_uid == base
    assert tree_digest(harness.rootfs, "etc") == before
    assert b"changed" not in (harness.rootfs / "etc" / "passwd").read_bytes()
    assert not (harness.rootfs / "etc" / "new-file").exists()


async def test_no_raw_sockets_and_no_core_dumps(harness: NamespaceHarness) -> None:
    driver = harness.new_driver()
    info = await driver.create(harness.spec())
    code, out = await sh(info, "grep -E '^Cap(Eff|Bnd|Prm)' /proc/self/status")
    assert code == 0, out
    for line in out.splitlines():
        assert not int(line.split()[1], 16) & (1 << CAP_NET_RAW), line
    code, out = await sh(
        info,
        "python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)' 2>&1",
    )
    assert code != 0 and "Operation not permitted" in out, out
    code, out = await sh(info, "ulimit -Hc; ulimit -Sc; ulimit -Hc unlimited 2>&1; ulimit -Hc")
    lines = out.split("\n")
    assert lines[0:2] == ["0", "0"], out
    assert lines[-2] == "0", out  # raising the hard limit failed
    # the agent itself (pid 1), seen from the host
    assert info.pid is not None
    limits = read_text(f"/proc/{info.pid}/limits").splitlines()
    core = next(line for line in limits if line.startswith("Max core file size"))
    assert core.split()[4:6] == ["0", "0"], core


async def test_image_view_follows_the_lifecycle(harness: NamespaceHarness) -> None:
    driver = harness.new_driver()
    spec = harness.spec()
    info = await driver.create(spec)
    run = harness.run_dir(spec.sandbox_id)
    base = info.agent_socket_owner
    assert base is not None
    assert is_mount_point(run.lower)
    assert (run.lower / "etc" / "passwd").stat().st_uid == base
    # only root and the sandbox's own uid may enter its run directory
    st = run.root.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, base, 0o710)
    assert run.disk_mount.stat().st_mode & 0o007 == 0
    await driver.stop(spec.sandbox_id)
    assert not is_mount_point(run.lower)
    assert not [line for line in mountinfo_lines() if str(run.root) in line]
    restarted = await driver.start(spec.sandbox_id)
    assert restarted.agent_socket_owner == base
    assert is_mount_point(run.lower)
    # a server restart finds the mount in place and the sandbox usable
    again = harness.new_driver()
    found = await again.recover()
    assert found[spec.sandbox_id] == restarted
    assert (await sh(restarted, "cat /etc/hostname"))[1].strip() == spec.hostname
    await again.stop(spec.sandbox_id)
    assert (await again.start(spec.sandbox_id)).agent_socket_owner == base


async def test_sandbox_from_before_per_sandbox_ranges_keeps_working(
    harness: NamespaceHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record with uid_base 100000 (the old shared range, the image's own) is re-adopted,
    stopped and started by an upgraded server: it uses the image directly, as before."""
    old = harness.new_driver()
    monkeypatch.setattr(old.uid_ranges, "allocate", lambda *a, **k: IMAGE_UID_BASE)
    spec = harness.spec()
    info = await old.create(spec)
    assert info.agent_socket_owner == IMAGE_UID_BASE
    run = harness.run_dir(spec.sandbox_id)
    assert not is_mount_point(run.lower)
    monkeypatch.undo()
    upgraded = harness.new_driver()
    found = await upgraded.recover()
    assert found[spec.sandbox_id] == info
    assert (await sh(info, "echo kept > /root/f; id -u"))[1].strip() == "0"
    await upgraded.stop(spec.sandbox_id)
    restarted = await upgraded.start(spec.sandbox_id)
    assert restarted.agent_socket_owner == IMAGE_UID_BASE
    assert host_range(restarted) == (IMAGE_UID_BASE, RANGE_SIZE)
    assert (await sh(restarted, "cat /root/f"))[1].strip() == "kept"
    await upgraded.destroy(spec.sandbox_id)
    assert harness.leftovers(spec.sandbox_id) == []
