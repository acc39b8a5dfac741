"""A gVisor sandbox's run directory and the host mounts that make its root filesystem.

Reuses the namespace driver's layout (``namespace/state.py``: ``state.json``, ``disk.img``,
``disk/``, ``lower``/``lower.N``) and adds::

    <state_dir>/<id>/bundle/          the OCI bundle: config.json (root-only)
    <state_dir>/<id>/bundle/rootfs/   overlay: lowers = the image idmapped to ids 0.., upper =
                                      disk/upper (a mount while running or paused)
    <state_dir>/<id>/runsc/           runsc's --root for this sandbox alone (its state files)
    <state_dir>/<id>/disk/sandbox.log the agent's and runsc's output (inside the disk quota)

Why the image is mapped to ids ``0..65535`` on the host rather than to a per-sandbox range as
the namespace driver does: gVisor's gofer (root on the host) creates the sandbox's files with
the uid the *sentry* asks for, which is the uid inside (0 for root), and runsc 20221219 has no
id mapping for the gofer; an idmapped lower mapped to ``S..`` would mix with uppers owned by
``0..``. Mapping everything to ``0..`` keeps ownership consistent, and the files stay out of
reach of other host users: the run directory is ``root`` 0700 and the disk is mounted
``nosuid,nodev`` (a setuid file made inside is inert on the host).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

from voidrun_server.drivers.base import DriverError
from voidrun_server.drivers.namespace import disk, idmount
from voidrun_server.drivers.namespace.state import RunDir

__all__ = ["GvisorRun", "mount_lowers", "mount_rootfs", "remove_socket", "unmount_all"]

_MS_NOSUID, _MS_NODEV = 2, 4
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong]
_libc.mount.argtypes += [ctypes.c_char_p]


@dataclass(frozen=True)
class GvisorRun(RunDir):
    @classmethod
    def at(cls, state_dir: Path, sandbox_id: str) -> GvisorRun:
        return cls(RunDir.of(state_dir, sandbox_id).root)

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"

    @property
    def rootfs(self) -> Path:
        return self.bundle / "rootfs"

    @property
    def runsc_root(self) -> Path:
        return self.root / "runsc"

    @property
    def pid_file(self) -> Path:
        return self.root / "sandbox.pid"

    @property
    def log_file(self) -> Path:
        return self.disk_mount / "sandbox.log"


def mount_lowers(run: GvisorRun, layers: list[Path], deadline: float) -> list[Path]:
    """Each image layer, read-only, its owners ``image base + N`` shown as ``N``."""
    lowers = []
    for index, layer in enumerate(layers):
        target = run.lower_at(index)
        if not idmount.is_mount_point(target):
            target.mkdir(mode=0o700, exist_ok=True)
            image = os.stat(layer)
            idmount.mount_idmapped(
                layer,
                target,
                idmount.IdRange(image.st_uid, 0),
                idmount.IdRange(image.st_gid, 0),
                deadline,
            )
        lowers.append(target)
    return lowers


def mount_rootfs(run: GvisorRun, lowers: list[Path]) -> None:
    """The overlay runsc gets as its root (nosuid, nodev), unless already mounted."""
    if os.path.ismount(run.rootfs):
        return
    run.rootfs.mkdir(mode=0o755, parents=True, exist_ok=True)
    options = f"lowerdir={':'.join(str(p) for p in lowers)},upperdir={run.upper},workdir={run.work}"
    flags = _MS_NOSUID | _MS_NODEV
    target = os.fsencode(run.rootfs)
    if _libc.mount(b"overlay", target, b"overlay", flags, options.encode()):
        err = ctypes.get_errno()
        raise DriverError("cannot mount the sandbox's root overlay", os.strerror(err))


def unmount_all(run: GvisorRun, deadline: float) -> None:
    """Overlay, image views, disk and its loop device; each only if present."""
    disk.unmount(run.rootfs, deadline)
    for lower in run.lower_mounts():
        idmount.unmount_detach(lower)
    disk.release(run.disk_image, run.disk_mount, deadline)
    for mount_point in (run.rootfs, *run.lower_mounts(), run.disk_mount):
        if idmount.is_mount_point(mount_point):
            raise DriverError(f"{mount_point} is still mounted")


def remove_socket(run: GvisorRun) -> None:
    with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
        os.unlink(run.socket)
