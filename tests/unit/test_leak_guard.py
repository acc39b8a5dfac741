"""The host-state detection behind ``purge`` and the session leak guard
(``drivers/namespace/leftovers.py``, ``tests/support/leak_plugin.py``)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from tests.support.tiers import skip_tier
from voidrun_server.drivers.namespace.leftovers import (
    HostView,
    Leftover,
    find,
    parse_mountinfo,
    parse_routes,
)
from voidrun_server.drivers.namespace.network import host_names

REPO = Path(__file__).resolve().parents[2]
OURS = Path("/var/tmp/voidrun-run-abc")
THEIRS = Path("/var/tmp/voidrun-run-xyz")  # a concurrent run on the same host
SID = "6b0bc6962c2a1b2c3d4e5f60"
OTHER_SID = "6b0bc6962c2affffffffffff"
STATE = OURS / "voidrun-api-1" / "sandboxes"
MOUNTINFO = f"""\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
530 22 7:3 / {STATE}/{SID}/disk rw,nosuid - ext4 /dev/loop3 rw
531 22 0:4 net:[4026532] {STATE}/{SID}/netns rw shared:9 - nsfs nsfs rw
532 22 0:50 / {OURS}/with\\040space rw - tmpfs tmpfs rw
533 22 7:4 / {THEIRS}/voidrun-api-2/sandboxes/{OTHER_SID}/disk rw - ext4 /dev/loop4 rw
"""
ROUTES = """\
Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT
eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
vr0123456789ab\t0500C90A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0
vrfedcba987654\t0500CA0A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0
"""


def fake_view() -> HostView:
    table, bridge = host_names(STATE)
    their_table, their_bridge = host_names(THEIRS / "voidrun-api-2" / "sandboxes")
    return HostView(
        mounts=parse_mountinfo(MOUNTINFO),
        loops={
            "/dev/loop3": f"{STATE}/{SID}/disk.img",
            "/dev/loop4": f"{THEIRS}/voidrun-api-2/sandboxes/{OTHER_SID}/disk.img",
            "/dev/loop5": "/srv/unrelated.img",
        },
        links=["lo", "eth0", bridge, their_bridge, f"vr{SID[-12:]}", f"vr{OTHER_SID[-12:]}"]
        + ["vr0123456789ab", "vrfedcba987654"],
        routes=parse_routes(ROUTES),
        tables=[table, their_table, "filter"],
        processes={
            10: ["/usr/sbin/dnsmasq", f"--conf-file={STATE}/.network/dnsmasq.conf"],
            11: ["/usr/sbin/dnsmasq", f"--conf-file={THEIRS}/x/.network/dnsmasq.conf"],
            12: ["sleep", "1"],
            os.getpid(): ["pytest", str(OURS)],
        },
        cgroups=[f"/sys/fs/cgroup/voidrun/{SID}", f"/sys/fs/cgroup/voidrun/{OTHER_SID}"],
    )


def test_find_reports_only_what_belongs_to_the_given_dirs() -> None:
    found = find(fake_view(), [OURS], [STATE], [ipaddress.IPv4Network("10.201.0.0/24")])
    table, bridge = host_names(STATE)
    assert sorted(found) == sorted(
        [
            Leftover("mount", f"{STATE}/{SID}/disk"),
            Leftover("mount", f"{STATE}/{SID}/netns"),
            Leftover("mount", f"{OURS}/with space"),
            Leftover("loop device", "/dev/loop3", f"{STATE}/{SID}/disk.img"),
            Leftover(
                "process", "10", f"/usr/sbin/dnsmasq --conf-file={STATE}/.network/dnsmasq.conf"
            ),
            Leftover("link", bridge),
            Leftover("link", f"vr{SID[-12:]}"),  # its id is in a mount path
            Leftover("link", "vr0123456789ab"),  # routed into our subnet
            Leftover("nft table", table),
            Leftover("cgroup", f"/sys/fs/cgroup/voidrun/{SID}"),
        ]
    )


def test_find_reports_nothing_for_a_clean_host() -> None:
    view = fake_view()
    assert find(view, [OURS / "voidrun-api-9"], [OURS / "voidrun-api-9" / "sandboxes"]) == []
    assert find(HostView(), [OURS], [STATE], [ipaddress.IPv4Network("10.0.0.0/8")]) == []


def test_parse_routes_reads_destinations_and_masks() -> None:
    routes = parse_routes(ROUTES)
    assert (ipaddress.IPv4Network("0.0.0.0/0"), "eth0") in routes
    assert (ipaddress.IPv4Network("10.201.0.5/32"), "vr0123456789ab") in routes


LEAKY_SUITE = """
import ctypes, os
from tests.support import hostleaks

def test_leaks_a_mount():
    target = hostleaks.new_state_dir("voidrun-leaky-")
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mount(b"none", bytes(target), b"tmpfs", 0, None) == 0
    open("target.txt", "w").write(str(target))

def test_clean():
    pass
"""


@pytest.mark.root
def test_the_guard_fails_a_run_that_leaves_a_mount_and_removes_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() != 0:
        skip_tier("root", "the guard's end-to-end test mounts a tmpfs")
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the child imports tests.support
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_leaky=LEAKY_SUITE)
    result = pytester.runpytest_subprocess("-p", "tests.support.leak_plugin")
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    target = Path((pytester.path / "target.txt").read_text())
    result.stdout.fnmatch_lines(["*host state left behind by this run*", f"left: mount {target}"])
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(target) not in mounts  # the guard purged it
    assert not target.parent.exists()  # and removed the run's directory


@pytest.mark.root
def test_the_guard_passes_a_clean_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() != 0:
        skip_tier("root", "the guard looks at host state as root")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        test_clean="from tests.support import hostleaks\n"
        "def test_dir():\n    hostleaks.new_state_dir('voidrun-clean-')\n"
    )
    result = pytester.runpytest_subprocess("-p", "tests.support.leak_plugin")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    assert "left behind" not in result.stdout.str()
