"""Spawning bubblewrap from a small mount namespace, so a create costs the same at 1 or 1,000
sandboxes.

Every new mount namespace starts as a copy of its parent's mount table, and bwrap makes one
per sandbox (then detaches the copied tree under its new root). The host's table holds three
mounts per running sandbox (its disk, its idmapped image, its network namespace pin), so
copying it grows with the sandbox count: measured here, ``bwrap`` in a user namespace took
13 ms with 10 host mounts, 47 ms with 1,000 and 97 ms with 3,000.

So bwrap is not spawned from the host's namespace. At start the driver makes a *launch
namespace*: a copy of the host's, made private (nothing propagates either way), with every
sandbox-related mount detached from it (anything under the data directory, every network
namespace pin, every loop device). Per launch, the spawning worker thread:

1. clones the sandbox's own mounts from the host's namespace (``open_tree`` with
   ``OPEN_TREE_CLONE``, one per mount point: its disk and its image views, detached, in hand),
2. steps into the launch namespace and at once into a new copy of it (``unshare``; small),
3. attaches each clone at the same path (``move_mount``), spawns bwrap there, and
4. steps back into the host's namespace.

Each mount is cloned alone, never its parent directory's tree with ``AT_RECURSIVE``: the run
directories share one filesystem, and a recursive clone walks all of that filesystem's mounts
(every sandbox's) to find the ones below the path: 0.5 ms more per create beside 1,000.

bwrap's monitor keeps that per-sandbox namespace alive; it goes away with the sandbox, and the
host's mounts stay where the rest of the driver expects them. The thread first unshares its
file-system attributes (``CLONE_FS``): ``setns`` into a mount namespace requires it, and a
worker thread's cwd and root are "/" anyway.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from voidrun_server.drivers.base import DriverError
from voidrun_server.drivers.namespace.syscalls import syscall

__all__ = ["LaunchNamespace"]

_CLONE_FS = 0x200
_CLONE_NEWNS = 0x20000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_MNT_DETACH = 2
_AT_FDCWD = -100
_OPEN_TREE_CLONE = 1
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_OPEN_TREE, _MOVE_MOUNT = 428, 429  # the generic syscall table (x86_64 and aarch64)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    return field.encode().decode("unicode_escape") if "\\" in field else field


def _sandbox_mounts(mountinfo: str, roots: tuple[str, ...]) -> list[str]:
    """Mount points to detach from the launch namespace, deepest first: under ``roots``, and
    every network namespace pin and loop-device file system anywhere (other servers')."""
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 10:
            continue
        separator = fields.index("-")
        point, fstype, source = _unescape(fields[4]), fields[separator + 1], fields[separator + 2]
        under = any(point == r or point.startswith(r + "/") for r in roots)
        if point == "/":
            continue
        if under or fstype == "nsfs" or source.startswith("/dev/loop"):
            found.append(point)
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


class LaunchNamespace:
    """The small mount namespace bwrap is spawned from (see the module docstring)."""

    def __init__(self, roots: tuple[Path, ...]) -> None:
        self._roots = tuple(str(r.resolve()) for r in roots)
        self._host = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        self._clean: int | None = None
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """Make the launch namespace now, in a short-lived thread of its own, so that no
        create pays for it (after a restart beside 1,000 sandboxes, detaching their mounts
        from the copy takes a moment)."""
        failure: list[BaseException] = []

        def make() -> None:
            try:
                self._launch_ns()
            except BaseException as exc:  # reported in the caller's thread
                failure.append(exc)

        worker = threading.Thread(target=make, name="voidrun-launch-ns")
        worker.start()
        worker.join()
        if failure:
            raise DriverError("cannot make the launch mount namespace", str(failure[0]))

    def close(self) -> None:
        for fd in (self._clean, self._host):
            if fd is not None:
                os.close(fd)
        self._clean = None

    def _launch_ns(self) -> int:
        """The launch namespace's fd, made on first use (in the calling worker thread, which
        is then back in the host's namespace)."""
        with self._lock:
            if self._clean is None:
                self._clean = self._make()
            return self._clean

    def _make(self) -> int:
        _check(_libc.unshare(_CLONE_FS | _CLONE_NEWNS), "unshare a mount namespace")
        try:
            _check(_libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "make private")
            with open("/proc/thread-self/mountinfo") as f:
                mountinfo = f.read()
            for point in _sandbox_mounts(mountinfo, self._roots):
                _libc.umount2(os.fsencode(point), _MNT_DETACH)  # gone already: fine
            return os.open("/proc/thread-self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            _check(_libc.setns(self._host, _CLONE_NEWNS), "back to the host's mount namespace")

    @contextlib.contextmanager
    def spawning(self, mount_points: Sequence[Path]) -> Iterator[None]:
        """Run the block (the spawn) with this thread in a fresh copy of the launch namespace
        that also holds the host's mounts at ``mount_points``, then return to the host's
        namespace."""
        clean = self._launch_ns()
        with contextlib.ExitStack() as trees:
            clones = []
            for point in mount_points:
                try:
                    tree = syscall(
                        _OPEN_TREE,
                        ctypes.c_int(_AT_FDCWD),
                        ctypes.c_char_p(os.fsencode(point)),
                        ctypes.c_uint(_OPEN_TREE_CLONE | os.O_CLOEXEC),
                    )
                except OSError as exc:
                    raise DriverError(
                        "cannot prepare the sandbox's mounts",
                        f"clone the mount at {point}: {exc.strerror}",
                    ) from exc
                trees.callback(os.close, tree)
                clones.append((tree, os.fsencode(point)))
            try:
                _check(_libc.unshare(_CLONE_FS), "unshare file-system attributes")
                _check(_libc.setns(clean, _CLONE_NEWNS), "enter the launch namespace")
            except OSError as exc:
                raise DriverError("cannot enter the launch namespace", str(exc)) from exc
            try:
                try:
                    _check(_libc.unshare(_CLONE_NEWNS), "unshare a launch namespace")
                    empty = ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH)
                    for tree, path in clones:
                        try:
                            syscall(_MOVE_MOUNT, tree, b"", _AT_FDCWD, path, empty)
                        except OSError as exc:
                            where = f"attach the mount at {os.fsdecode(path)}: {exc.strerror}"
                            raise OSError(exc.errno, where) from exc
                except OSError as exc:
                    raise DriverError("cannot prepare the launch namespace", str(exc)) from exc
                yield
            finally:
                # never leave a worker thread in a sandbox's namespace
                _check(_libc.setns(self._host, _CLONE_NEWNS), "back to the host's namespace")
