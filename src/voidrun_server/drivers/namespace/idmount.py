"""One shared image, seen by each sandbox as its own: an idmapped, read-only mount.

Images are built once with every file owned by ``image_base + N`` on the host (``images/
shift.py``), while each sandbox runs in its own host uid range ``S .. S+65535`` (``uidrange.py``).
Per sandbox the driver clones the image directory into a detached mount, marks it idmapped and
read-only, and attaches it at ``<run dir>/lower``; bwrap then uses that path as the overlay's
lower layer::

    open_tree(AT_FDCWD, image, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)
    mount_setattr(fd, "", AT_EMPTY_PATH,
                  {MOUNT_ATTR_IDMAP | RDONLY | NOSUID | NODEV, userns_fd})
    move_mount(fd, "", AT_FDCWD, "<run>/lower", MOVE_MOUNT_F_EMPTY_PATH)

The clone is of the image directory's own mount only, not recursive: whatever is mounted below
an image has no business in a sandbox, and a recursive clone walks every mount of the image's
filesystem (every sandbox's disk and image mounts, when the images live on the same
filesystem as the data directory). It is made from a kept detached clone of the image
(``imageclones.py``), which has no mounts below it to look at.

The kernel translates a file's on-disk owner ``U`` through the mount's user namespace:
``make_kuid(userns, U)``. That namespace's map is therefore ``image_base S 65536`` (not the
sandbox's own ``0 S 65536``): on-disk ``100000+N`` then reads as ``S+N`` on the host and, through
the sandbox's namespace, as ``N`` inside. The image directory itself is never written: the
mount is read-only, and overlayfs copies a file up into the sandbox's own disk before changing
it. Verified here (kernel 6.18): bwrap, running as ``S`` inside the sandbox's fresh user
namespace, mounts an overlay with this idmapped lower and a plain ext4 upper owned by ``S``;
``ls -ln /`` shows ``0 0`` inside, copy-ups land in the upper as ``S+N``.

The user namespace for the map comes from a throw-away ``unshare --user`` child (util-linux):
the server is threaded, so it cannot ``unshare`` itself nor fork a Python child safely. The
server waits until the child's ``/proc/<pid>/ns/user`` differs from its own, writes the maps
(host root may map any range; the namespace is owned by root, not by ``S``, so the sandbox has
no power over it), opens the namespace, and kills the child; the mount keeps a reference to the
namespace. Measured cost: docs/benchmarks.md ("idmapped image mount"). The namespace is kept
(one fd per map, at most ``_CACHE_LIMIT``) and reused when a range is handed out again, so most
creates skip the helper: ranges are allocated lowest-first and reused after a destroy.

The three syscalls have the same numbers on x86_64 and aarch64 (the generic table); other
architectures are refused with :class:`DriverUnavailableError`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from voidrun_server.drivers.base import DriverError, DriverUnavailableError
from voidrun_server.drivers.namespace.imageclones import clone_image
from voidrun_server.drivers.namespace.syscalls import syscall

__all__ = ["IdRange", "check_support", "is_mount_point", "mount_idmapped", "unmount_detach"]

_SYSCALLS = {  # machine -> (open_tree, move_mount, mount_setattr)
    "x86_64": (428, 429, 442),
    "aarch64": (428, 429, 442),
    "arm64": (428, 429, 442),
}
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_RDONLY = 0x1
_MOUNT_ATTR_NOSUID = 0x2
_MOUNT_ATTR_NODEV = 0x4
_MOUNT_ATTR_IDMAP = 0x100000
_MNT_DETACH = 2
_HELPER_TIMEOUT = 5.0
_CACHE_LIMIT = 8192  # above the 4094 ranges one node hands out by default
_userns_cache: dict[tuple[IdRange, IdRange], int] = {}
_cache_lock = threading.Lock()

_libc = ctypes.CDLL(None, use_errno=True)
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


@dataclass(frozen=True)
class IdRange:
    """``count`` ids from ``source`` (on disk) shown as ``target`` .. (through the mount)."""

    source: int
    target: int
    count: int = 65536

    @property
    def line(self) -> str:
        return f"{self.source} {self.target} {self.count}\n"


def _numbers() -> tuple[int, int, int]:
    machine = platform.machine()
    numbers = _SYSCALLS.get(machine)
    if numbers is None:
        raise DriverUnavailableError(
            f"idmapped mounts are not wired up for {machine}",
            hint="the namespace driver supports x86_64 and aarch64",
        )
    return numbers


def check_support() -> None:
    """Raise DriverUnavailableError unless this machine can make idmapped mounts."""
    _numbers()
    if shutil.which("unshare", path="/usr/bin:/bin:/usr/sbin:/sbin") is None:
        raise DriverUnavailableError(
            "unshare (util-linux) not found", hint="apt-get install util-linux"
        )


def _userns_fd(uids: IdRange, gids: IdRange, deadline: float) -> int:
    """An fd of a fresh user namespace with exactly these maps (owned by host root)."""
    unshare = shutil.which("unshare", path="/usr/bin:/bin:/usr/sbin:/sbin") or "/usr/bin/unshare"
    own = os.readlink("/proc/self/ns/user")
    helper = subprocess.Popen(
        [unshare, "--user", "--", "sleep", "30"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin"},
        cwd="/",
    )
    try:
        ns = f"/proc/{helper.pid}/ns/user"
        give_up = min(deadline, time.monotonic() + _HELPER_TIMEOUT)
        while True:
            try:
                if os.readlink(ns) != own:
                    break
            except FileNotFoundError:
                pass
            if helper.poll() is not None:
                raise DriverError("unshare --user failed", f"exit status {helper.returncode}")
            if time.monotonic() > give_up:
                raise DriverError("unshare --user did not create a namespace in time")
            time.sleep(0.0002)
        for name, idrange in (("uid_map", uids), ("gid_map", gids)):
            fd = os.open(f"/proc/{helper.pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, idrange.line.encode())
            finally:
                os.close(fd)
        return os.open(ns, os.O_RDONLY | os.O_CLOEXEC)
    finally:
        helper.send_signal(signal.SIGKILL)
        helper.wait()


def _mapped_userns(uids: IdRange, gids: IdRange, deadline: float) -> tuple[int, bool]:
    """A user namespace fd with these maps, and whether the caller must close it (the
    namespace is kept for the next mount with the same maps unless the cache is full)."""
    key = (uids, gids)
    with _cache_lock:
        cached = _userns_cache.get(key)
    if cached is not None:
        return cached, False
    fd = _userns_fd(uids, gids, deadline)
    with _cache_lock:
        if len(_userns_cache) >= _CACHE_LIMIT:
            return fd, True
        kept = _userns_cache.setdefault(key, fd)
    if kept != fd:  # another thread made the same namespace meanwhile
        os.close(fd)
    return kept, False


def mount_idmapped(
    source: Path, target: Path, uids: IdRange, gids: IdRange, deadline: float
) -> None:
    """Attach a read-only view of ``source`` at ``target`` (an existing empty directory),
    with on-disk owners translated by ``uids``/``gids``. Blocking: call from a worker thread."""
    open_tree, move_mount, mount_setattr = _numbers()
    userns, owned = _mapped_userns(uids, gids, deadline)
    try:
        try:
            tree = clone_image(source, open_tree)
        except OSError as exc:
            raise DriverError(f"cannot clone the image mount {source}", str(exc)) from exc
        try:
            attr = _MountAttr(
                attr_set=_MOUNT_ATTR_IDMAP
                | _MOUNT_ATTR_RDONLY
                | _MOUNT_ATTR_NOSUID
                | _MOUNT_ATTR_NODEV,
                userns_fd=userns,
            )
            try:
                syscall(
                    mount_setattr,
                    ctypes.c_int(tree),
                    ctypes.c_char_p(b""),
                    ctypes.c_uint(_AT_EMPTY_PATH),
                    ctypes.byref(attr),
                    ctypes.c_size_t(ctypes.sizeof(attr)),
                )
            except OSError as exc:
                hint = " (does the image's filesystem support idmapped mounts?)"
                if exc.errno not in (errno.EINVAL, errno.EPERM, errno.EOPNOTSUPP):
                    hint = ""
                raise DriverError("cannot idmap the image mount", f"{exc}{hint}") from exc
            try:
                syscall(
                    move_mount,
                    ctypes.c_int(tree),
                    ctypes.c_char_p(b""),
                    ctypes.c_int(_AT_FDCWD),
                    ctypes.c_char_p(os.fsencode(target)),
                    ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH),
                )
            except OSError as exc:
                raise DriverError(f"cannot attach the image mount at {target}", str(exc)) from exc
        finally:
            os.close(tree)
    finally:
        if owned:
            os.close(userns)


def _mount_id(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("mnt_id:"):
                    return int(line.split()[1])
    finally:
        os.close(fd)
    raise DriverError("no mnt_id in /proc/self/fdinfo", "kernel too old (< 3.15)")


def is_mount_point(path: Path) -> bool:
    """Whether a mount is attached at ``path``.

    ``os.path.ismount`` compares device numbers, so it misses a bind (or idmapped) mount of a
    directory of the same filesystem, and ``shutil.rmtree`` would then walk into the image.
    The mount id of an open file is exact.
    """
    own = _mount_id(path)
    return own is not None and own != _mount_id(path.parent)


def unmount_detach(target: Path) -> None:
    """Lazily unmount ``target`` if something is mounted there (stacked mounts included)."""
    path = os.fsencode(target)
    while is_mount_point(target):
        if _libc.umount2(path, _MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOENT):
                return
            raise DriverError(f"cannot unmount {target}", os.strerror(err))
