"""Ownership shifting on a small hand-made tree (fast, no network; needs root for chown)."""

from __future__ import annotations

import os
import stat
import struct
import subprocess
from pathlib import Path

import pytest
from tests.support.tiers import skipif_tier

from voidrun_server.images.shift import OwnershipShiftError, shift_ownership

pytestmark = [
    pytest.mark.root,
    skipif_tier(os.geteuid() != 0, "root", "chown to other uids needs root"),
]

BASE = 100000
CAP_NET_RAW = 1 << 13


def _v2_caps(permitted: int) -> bytes:
    # magic: revision 2 | effective flag, then (permitted, inheritable) x 2
    return struct.pack("<IIIII", 0x02000001, permitted, 0, 0, 0)


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "var/mail").mkdir(parents=True)
    outside = tmp_path / "host-file"
    outside.write_text("host\n")
    os.chown(outside, 0, 0)
    paths = {
        "root": root,
        "outside": outside,
        "passwd": root / "etc/passwd",
        "apt_owned": root / "etc/apt-owned",
        "su": root / "usr/bin/su",
        "chage": root / "usr/bin/chage",
        "ping": root / "usr/bin/ping",
        "link": root / "etc/host-link",
        "hard_a": root / "usr/bin/hard-a",
        "hard_b": root / "usr/bin/hard-b",
        "mail": root / "var/mail",
    }
    for key in ("passwd", "apt_owned", "su", "chage", "ping", "hard_a"):
        paths[key].write_text(key)
    os.link(paths["hard_a"], paths["hard_b"])
    os.symlink(outside, paths["link"])  # absolute: points at the HOST while walked from outside
    os.chown(paths["apt_owned"], 42, 42)
    os.chown(paths["chage"], 0, 42)
    os.chown(paths["mail"], 0, 8)
    os.chmod(paths["su"], 0o4755)
    os.chmod(paths["chage"], 0o2755)
    os.chmod(paths["mail"], 0o2775)
    os.setxattr(paths["ping"], "security.capability", _v2_caps(CAP_NET_RAW))
    return paths


def _owner(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def test_shifts_every_inode_by_the_base(tree: dict[str, Path]) -> None:
    shift_ownership(tree["root"], BASE)
    for dirpath, dirnames, filenames in os.walk(tree["root"]):
        for name in (".", *dirnames, *filenames):
            uid, gid = _owner(Path(dirpath, name))
            assert uid >= BASE and gid >= BASE, Path(dirpath, name)
    assert _owner(tree["passwd"]) == (BASE, BASE)
    assert _owner(tree["apt_owned"]) == (BASE + 42, BASE + 42)
    assert _owner(tree["chage"]) == (BASE, BASE + 42)
    assert _owner(tree["root"]) == (BASE, BASE)


def test_symlinks_are_shifted_but_never_followed(tree: dict[str, Path]) -> None:
    shift_ownership(tree["root"], BASE)
    assert _owner(tree["link"]) == (BASE, BASE)
    assert _owner(tree["outside"]) == (0, 0)
    assert os.readlink(tree["link"]) == str(tree["outside"])


def test_setuid_and_setgid_bits_survive(tree: dict[str, Path]) -> None:
    shift_ownership(tree["root"], BASE)
    assert stat.S_IMODE(os.lstat(tree["su"]).st_mode) == 0o4755
    assert stat.S_IMODE(os.lstat(tree["chage"]).st_mode) == 0o2755
    assert stat.S_IMODE(os.lstat(tree["mail"]).st_mode) == 0o2775


def test_hard_links_are_shifted_once(tree: dict[str, Path]) -> None:
    shift_ownership(tree["root"], BASE)
    assert _owner(tree["hard_a"]) == (BASE, BASE)
    assert _owner(tree["hard_b"]) == (BASE, BASE)


def test_file_capabilities_are_rewritten_for_the_namespace_root(tree: dict[str, Path]) -> None:
    shift_ownership(tree["root"], BASE)
    value = os.getxattr(tree["ping"], "security.capability")
    magic, permitted, _inh, _p2, _i2, rootid = struct.unpack("<IIIIII", value)
    assert magic == 0x03000001
    assert permitted == CAP_NET_RAW
    assert rootid == BASE


def test_refuses_to_shift_twice(tree: dict[str, Path]) -> None:
    shift_ownership(tree["root"], BASE)
    with pytest.raises(OwnershipShiftError, match="already shifted"):
        shift_ownership(tree["root"], BASE)


def test_refuses_ids_outside_the_mapped_range(tree: dict[str, Path]) -> None:
    os.chown(tree["passwd"], 70000, 0)
    with pytest.raises(OwnershipShiftError, match="uid 70000"):
        shift_ownership(tree["root"], BASE)


def test_refuses_to_cross_into_a_mount(tree: dict[str, Path]) -> None:
    point = tree["root"] / "dev"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(point)], check=True)
    try:
        with pytest.raises(OwnershipShiftError, match="another filesystem"):
            shift_ownership(tree["root"], BASE)
    finally:
        subprocess.run(["umount", str(point)], check=True)
