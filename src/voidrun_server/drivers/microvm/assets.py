"""The guest's kernel and initramfs, made from Debian packages on first use and cached.

* Kernel: ``apt-cache depends <package>`` names the ABI package apt offers now (for
  ``linux-image-cloud-amd64``, e.g. ``linux-image-6.1.0-56-cloud-amd64``); ``apt-get download``
  fetches it from whatever sources the host's apt is configured with, and ``dpkg-deb -x``
  unpacks it under ``<cache>/kernel/<abi package>/``. Nothing is installed on the host.
* Initramfs: busybox-static, the virtio and overlay modules of that kernel (loaded in
  dependency order by ``/init``; the cloud kernel has ext4 built in) and ``guest_init.py``,
  written as a newc archive by ``cpio.py``. Its file name is a hash of those inputs, so a new
  kernel or init script gives a new file and the old one is never rewritten under a VM.

All functions block (apt, dpkg, file writes): call them from a worker thread.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from voidrun_server.drivers.base import DriverUnavailableError
from voidrun_server.drivers.microvm.cpio import Entry, write_newc
from voidrun_server.drivers.microvm.guest_init import INIT_SCRIPT

__all__ = ["GuestAssets", "MODULES", "build_initramfs", "fetch_kernel", "prepare_assets"]

# Load order matters: virtio_ring before virtio (virtio_break_device), transports before devices.
MODULES = ("virtio_ring", "virtio", "virtio_mmio", "virtio_console", "virtio_blk", "overlay")
BUSYBOX = Path("/bin/busybox")
APT_TIMEOUT = 300.0
_DEPENDS = re.compile(r"^\s*Depends:\s*(linux-image-\S+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class GuestAssets:
    kernel: Path
    initrd: Path
    kernel_release: str  # "6.1.0-56-cloud-amd64"


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=APT_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DriverUnavailableError(
            f"{argv[0]} failed: {exc}", hint="the microvm driver fetches its kernel with apt"
        ) from exc
    if done.returncode != 0:
        raise DriverUnavailableError(
            f"{' '.join(argv)} failed: {done.stderr.strip()[-500:]}",
            hint="run `apt-get update` (the guest kernel comes from the host's apt sources)",
        )
    return done.stdout


def _abi_package(package: str) -> str:
    """The versioned kernel package a meta package (linux-image-cloud-amd64) points to now."""
    if not package.startswith("linux-image-"):
        raise DriverUnavailableError(f"{package!r} is not a linux-image package")
    out = _run(["apt-cache", "depends", package])
    found = _DEPENDS.search(out)
    return found.group(1) if found else package


def fetch_kernel(cache: Path, package: str) -> Path:
    """Download and unpack the kernel package once; returns the unpacked tree."""
    abi = _abi_package(package)
    target = cache / "kernel" / abi
    if (target / "boot").is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "boot").is_dir():
            return target
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
            work = Path(tmp)
            os.chmod(work, 0o755)  # apt's _apt user writes the download here
            _run(["apt-get", "download", "-q", abi], cwd=work)
            debs = sorted(work.glob("*.deb"))
            if not debs:
                raise DriverUnavailableError(f"apt-get download {abi} produced no .deb")
            unpacked = work / "tree"
            _run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)])
            os.rename(unpacked, target)
    return target


def _kernel_files(tree: Path) -> tuple[Path, str, dict[str, Path]]:
    images = sorted((tree / "boot").glob("vmlinuz-*"))
    if not images:
        raise DriverUnavailableError(f"no boot/vmlinuz-* in {tree}")
    release = images[-1].name.removeprefix("vmlinuz-")
    modules_root = tree / "lib" / "modules" / release
    found: dict[str, Path] = {}
    for path in modules_root.rglob("*.ko"):
        if path.stem in MODULES:
            found[path.stem] = path
    missing = [m for m in MODULES if m not in found]
    if missing:
        raise DriverUnavailableError(
            f"kernel {release} lacks modules {missing}", hint="use a Debian cloud-amd64 kernel"
        )
    return images[-1], release, found


def build_initramfs(cache: Path, modules: dict[str, Path], release: str) -> Path:
    """The initramfs for these modules, the installed busybox and ``guest_init.py``."""
    if not BUSYBOX.is_file():
        raise DriverUnavailableError(f"{BUSYBOX} not found", hint="apt-get install busybox-static")
    init = INIT_SCRIPT.encode()
    busybox = BUSYBOX.read_bytes()
    bodies = {name: modules[name].read_bytes() for name in MODULES}
    digest = hashlib.sha256(init + busybox + release.encode())
    for name in MODULES:
        digest.update(name.encode() + hashlib.sha256(bodies[name]).digest())
    target = cache / f"initrd-{digest.hexdigest()[:16]}.cpio.gz"
    if target.is_file():
        return target
    entries = [Entry.directory(d) for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules")]
    entries += [Entry.file("bin/busybox", busybox, 0o755), Entry.file("init", init, 0o755)]
    entries += [Entry.file(f"lib/modules/{n}.ko", bodies[n]) for n in MODULES]
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=".initrd-")
    os.close(fd)
    try:
        write_newc(Path(tmp), entries)
        os.chmod(tmp, 0o644)
        os.rename(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def prepare_assets(cache: Path, package: str) -> GuestAssets:
    """Kernel and initramfs, fetched/built if missing; world-readable (QEMU runs unprivileged)."""
    cache.mkdir(parents=True, exist_ok=True)
    os.chmod(cache, 0o755)
    tree = fetch_kernel(cache, package)
    kernel, release, modules = _kernel_files(tree)
    initrd = build_initramfs(cache, modules, release)
    kernel_copy = cache / kernel.name
    if not kernel_copy.is_file():
        tmp = kernel_copy.with_suffix(".tmp")
        shutil.copyfile(kernel, tmp)
        os.chmod(tmp, 0o644)
        os.rename(tmp, kernel_copy)
    return GuestAssets(kernel_copy, initrd, release)
