"""Really build the ``code`` image (debootstrap from the Debian mirror, tsx from npm) and use it.

Built once per session into ``$VOIDRUN_TEST_IMAGES_DIR`` when set, so CI and other test modules
can reuse one cached image, else into a temporary directory. Needs root, debootstrap and
network access to the Debian mirror and the npm registry.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.tiers import skip_tier, skipif_tier

from voidrun_server.images import build, chroot
from voidrun_server.images.build import (
    BuildProgress,
    BuiltImage,
    build_code_image,
    find_built_image,
)
from voidrun_server.images.mirror import host_debian_mirror
from voidrun_server.services.images import SYSTEM_IMAGES

UID_BASE = 100000
TAG = os.environ.get(
    "VOIDRUN_TEST_IMAGE_TAG", SYSTEM_IMAGES["code"]
)  # shared with tests/drivers, tests/api

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(3600),  # the first test to need the image pays for the build
    skipif_tier(os.geteuid() != 0, "slow", "building an image needs root"),
    skipif_tier(
        shutil.which("debootstrap") is None and not Path("/usr/sbin/debootstrap").exists(),
        "slow",
        "debootstrap is not installed (apt-get install debootstrap)",
    ),
]


@pytest.fixture(scope="session")
def images_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("VOIDRUN_TEST_IMAGES_DIR")
    if configured:
        Path(configured).mkdir(parents=True, exist_ok=True)
        return Path(configured)
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="session")
def image(images_root: Path) -> BuiltImage:
    return build_code_image(images_root, tag=TAG, uid_base=UID_BASE)


@pytest.fixture
def scratch_root(image: BuiltImage, tmp_path: Path) -> Iterator[Path]:
    """The image under a throwaway overlay with /proc, as a sandbox sees it.

    Commands run as host root would otherwise leave files (npm logs, caches) in the shared,
    cached image, or in a scratch layer another test then uses as a different user.
    """
    work = tmp_path
    upper, scratch, merged = work / "upper", work / "work", work / "merged"
    for d in (upper, scratch, merged):
        d.mkdir()
    options = f"lowerdir={image.rootfs},upperdir={upper},workdir={scratch}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)], check=True)
    try:
        subprocess.run(["mount", "-t", "proc", "proc", str(merged / "proc")], check=True)
        try:
            yield merged
        finally:
            subprocess.run(["umount", str(merged / "proc")], check=True)
    finally:
        subprocess.run(["umount", str(merged)], check=True)


def _chroot(root: Path, *argv: str) -> str:
    """Run a command in the image as host root (fine for checking what is installed)."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LC_ALL": "C.UTF-8"}
    result = subprocess.run(
        [chroot._tool("chroot"), str(root), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, (argv, result.stdout, result.stderr)
    return result.stdout


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("python3", "-c", "print(1+1)"), "2"),
        (("node", "-e", "console.log(1+1)"), "2"),
        (("tsx", "-e", "const n: number = 1 + 1; console.log(n)"), "2"),
        (("bash", "-c", "echo $((1+1))"), "2"),
        (("sh", "-c", "echo 2 | bzip2 | bunzip2"), "2"),
        (
            ("sh", "-c", "cd /tmp && echo 2 > t && zip -q t.zip t && unzip -p t.zip && rm t t.zip"),
            "2",
        ),
        (("sh", "-c", "ps -o comm= -p $$"), "sh"),
    ],
)
def test_interpreters_and_tools_run(
    scratch_root: Path, argv: tuple[str, ...], expected: str
) -> None:
    assert _chroot(scratch_root, *argv).strip() == expected


@pytest.mark.parametrize(
    "argv",
    [
        ("npm", "--version"),
        ("git", "--version"),
        ("curl", "--version"),
        ("python3", "-m", "pip", "--version"),
        ("python3", "-c", "import venv, ensurepip"),
        ("python3", "-m", "pip", "install", "--dry-run", "--no-index", "--find-links", "/x", "pip"),
        ("tar", "--version"),
        ("gzip", "--version"),
        ("less", "--version"),
        # the code interpreter's kernels and what its users import first
        ("python3", "-c", "import ipykernel, jupyter_client, matplotlib, numpy, pandas"),
        # fonttools' "scipy | munkres" took the small one (scipy brings a C toolchain)
        ("python3", "-c", "import munkres, importlib.util as u; assert not u.find_spec('scipy')"),
    ],
)
def test_packages_present(scratch_root: Path, argv: tuple[str, ...]) -> None:
    _chroot(scratch_root, *argv)


def test_root_prompt_ends_with_hash(scratch_root: Path) -> None:
    prompt = _chroot(scratch_root, "bash", "-ic", 'printf "%s" "${PS1@P}"')
    assert prompt.endswith("# ")


def test_sandbox_files_and_mount_points(image: BuiltImage) -> None:
    root = image.rootfs
    for mount_point in ("opt/voidrun", "run/voidrun", "proc", "dev", "sys", "tmp"):
        assert (root / mount_point).is_dir(), mount_point
    assert (root / "etc/hostname").read_text().strip()
    resolv = root / "etc/resolv.conf"
    assert resolv.is_file() and not resolv.is_symlink()
    mirror = host_debian_mirror("bookworm")
    assert mirror and f"deb {mirror} bookworm main" in (root / "etc/apt/sources.list").read_text()
    assert not (root / "usr/sbin/policy-rc.d").exists()
    assert list((root / "var/lib/apt/lists").glob("*Packages*")) == []
    assert list((root / "var/cache/apt/archives").glob("*.deb")) == []


def test_ownership_shifted_and_setuid_kept(image: BuiltImage) -> None:
    root = image.rootfs
    for path in ("", "etc/passwd", "usr/bin/python3", "root", "usr/local/bin/tsx"):
        st = os.lstat(root / path)
        assert (st.st_uid, st.st_gid) == (UID_BASE, UID_BASE), path
    shadow = os.lstat(root / "etc/shadow")
    assert shadow.st_gid == UID_BASE + 42  # group "shadow"
    for path in ("usr/bin/passwd", "usr/bin/su"):
        assert os.lstat(root / path).st_mode & stat.S_ISUID, path
    unowned = subprocess.run(
        [
            "find",
            str(root),
            "-xdev",
            "(",
            "-uid",
            f"-{UID_BASE}",
            "-o",
            "-gid",
            f"-{UID_BASE}",
            ")",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert unowned == []


def test_manifest_written(image: BuiltImage, images_root: Path) -> None:
    manifest = json.loads((image.rootfs.parent / "manifest.json").read_text())
    assert manifest["name"] == "code" and manifest["tag"] == TAG
    assert manifest["uid_base"] == UID_BASE
    assert manifest["size_bytes"] == image.size_bytes > 100 * 2**20
    assert set(build.CODE_PACKAGES) <= set(manifest["packages"])
    assert find_built_image(images_root, "code", TAG) == image


def test_second_build_is_the_cached_image(
    image: BuiltImage, images_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_rebuild(*args: object, **kwargs: object) -> None:
        raise AssertionError("rebuilt a cached image")

    monkeypatch.setattr(build, "_build_tree", no_rebuild)
    reports: list[BuildProgress] = []
    again = build_code_image(images_root, tag=TAG, uid_base=UID_BASE, progress=reports.append)
    assert again == image
    assert {r.step for r in reports} == {"prepare"}


def test_partial_dir_is_not_an_image(image: BuiltImage, images_root: Path) -> None:
    partial = images_root / "code" / ".half.partial-test"
    (partial / "rootfs").mkdir(parents=True, exist_ok=True)
    half = images_root / "code" / "half"
    (half / "rootfs").mkdir(parents=True, exist_ok=True)
    try:
        assert find_built_image(images_root, "code", "half") is None
    finally:
        shutil.rmtree(partial)
        shutil.rmtree(half)


# Run as root inside a fresh user namespace that maps 0 -> UID_BASE, as a sandbox does. The
# parent (host root) writes the id maps; the child then becomes uid 0 there and chroots.
_USERNS_CHILD = r"""
import ctypes, os, sys
os.chdir(sys.argv[1])  # as host root: the path to it may be closed to the namespace's root
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000 | 0x00020000) != 0:  # CLONE_NEWUSER | CLONE_NEWNS
    raise OSError(ctypes.get_errno(), "unshare")
print("ready", flush=True)
sys.stdin.readline()
os.setresgid(0, 0, 0)
os.setgroups([])
os.setresuid(0, 0, 0)
os.chroot(".")
os.chdir("/")
env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LC_ALL": "C.UTF-8"}
os.execve("/bin/bash", ["bash", "-c", sys.argv[2]], env)
"""


def test_image_works_as_root_of_a_user_namespace(scratch_root: Path) -> None:
    script = (
        "id -u; test -O /etc/passwd && echo owns-passwd; head -c 5 /etc/shadow; echo; "
        "test -u /usr/bin/su && echo su-setuid; stat -c %U /root; "
        "tsx -e 'console.log(1+1)'"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", _USERNS_CHILD, str(scratch_root), script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        _, err = proc.communicate(timeout=30)
        skip_tier("slow", f"cannot create a user namespace here: {err.strip()[-200:]}")
    for name in ("uid_map", "gid_map"):
        Path(f"/proc/{proc.pid}/{name}").write_text(f"0 {UID_BASE} 65536\n")
    out, err = proc.communicate("go\n", timeout=120)
    assert proc.returncode == 0, err
    assert out.split() == ["0", "owns-passwd", "root:", "su-setuid", "root", "2"]
