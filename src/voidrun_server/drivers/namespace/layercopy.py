"""Copy a sandbox's writable layer (the overlay's upper dir) into a read-only image layer.

The result is one layer of a snapshot image: it is stacked over the image the sandbox runs on
(``SandboxSpec.layers``), so only what the sandbox changed is copied, and what it deleted
stays deleted:

* overlay whiteouts (a character device 0/0, how overlayfs records a deleted file) are kept as
  whiteouts, and so are opaque directories (``user.overlay.opaque``; bwrap mounts its overlay
  with ``userxattr``): a lower layer's whiteout hides the files below it exactly like the
  upper's did. No other xattr is copied (like image imports). Redirects and metacopy do not
  occur: overlayfs disables both with ``userxattr``, so renaming a directory of the image is
  a copy inside the sandbox.
* owners are shifted from the sandbox's host range (``src_base + N``) to the image range
  (``dst_base + N``); an id outside the range becomes ``nobody`` (65534).
* setuid/setgid bits on files are stripped and listed (the default image policy).
* the files the driver writes into every new upper (``/etc/hostname``, ``hosts``,
  ``resolv.conf``) are left out: a sandbox made from the layer gets its own anyway.
* sockets are left out (a socket file means nothing without its process); device nodes
  other than whiteouts cannot be made inside a sandbox and are left out too (listed).

The upper dir is written by the sandbox, so it is hostile: everything is opened relative to
its parent directory's fd without following symlinks, names are used only as single path
components, and nesting deeper than ``MAX_DEPTH`` fails the copy. Data is copied in the
kernel (``sendfile``), extent by extent, so sparse files stay sparse. Blocking.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from voidrun_server.drivers.base import DriverError, DriverTimeoutError

__all__ = ["MAX_DEPTH", "LayerStats", "copy_layer"]

MAX_DEPTH = 256
RANGE = 65536
NOBODY = 65534
IDENTITY_FILES = frozenset({"etc/hostname", "etc/hosts", "etc/resolv.conf"})
OVERLAY_XATTRS = ("user.overlay.opaque", "user.overlay.whiteout")
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SENDFILE_MAX = 1 << 30


@dataclass
class LayerStats:
    entries: int = 0
    bytes: int = 0
    whiteouts: int = 0
    stripped_setuid: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def copy_layer(
    upper: Path, dest: Path, *, src_base: int, dst_base: int, deadline: float
) -> LayerStats:
    """Copy ``upper`` into the existing, empty directory ``dest`` (see the module doc)."""
    copier = _Copier(src_base, dst_base, deadline)
    src = os.open(upper, _DIR)
    try:
        dst = os.open(dest, _DIR)
        try:
            copier.root = dst
            st = os.fstat(src)
            copier.directory(src, dst, "", 0)
            os.fchown(dst, dst_base, dst_base)  # the layer's owner is the image base (idmount)
            os.fchmod(dst, stat.S_IMODE(st.st_mode) & 0o7777)
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return copier.stats


class _Copier:
    def __init__(self, src_base: int, dst_base: int, deadline: float) -> None:
        self.src_base = src_base
        self.dst_base = dst_base
        self.deadline = deadline
        self.stats = LayerStats()
        self.root = -1
        self.links: dict[tuple[int, int], str] = {}  # (dev, ino) -> path in the layer

    def shift(self, host_id: int) -> int:
        n = host_id - self.src_base
        return self.dst_base + (n if 0 <= n < RANGE else NOBODY)

    def directory(self, src: int, dst: int, rel: str, depth: int) -> None:
        if depth >= MAX_DEPTH:
            raise DriverError(
                "cannot snapshot the sandbox", f"{rel}: nested deeper than {MAX_DEPTH}"
            )
        for name in sorted(os.listdir(src)):
            if time.monotonic() > self.deadline:
                raise DriverTimeoutError("snapshot copy timed out", rel or "/")
            path = f"{rel}/{name}" if rel else name
            if path in IDENTITY_FILES:
                continue
            st = os.stat(name, dir_fd=src, follow_symlinks=False)
            self.stats.entries += 1
            self.entry(src, dst, name, path, st, depth)

    def entry(
        self, src: int, dst: int, name: str, path: str, st: os.stat_result, depth: int
    ) -> None:
        mode = st.st_mode
        uid, gid = self.shift(st.st_uid), self.shift(st.st_gid)
        if stat.S_ISDIR(mode):
            os.mkdir(name, 0o700, dir_fd=dst)
            sub_src = os.open(name, _DIR, dir_fd=src)
            try:
                sub_dst = os.open(name, _DIR, dir_fd=dst)
                try:
                    _copy_overlay_xattrs(sub_src, sub_dst)
                    self.directory(sub_src, sub_dst, path, depth + 1)
                    os.fchown(sub_dst, uid, gid)
                    os.fchmod(sub_dst, stat.S_IMODE(mode))
                    os.utime(sub_dst, ns=(st.st_atime_ns, st.st_mtime_ns))
                finally:
                    os.close(sub_dst)
            finally:
                os.close(sub_src)
            return
        if stat.S_ISCHR(mode) and st.st_rdev == 0:  # an overlay whiteout
            os.mknod(name, stat.S_IFCHR, 0, dir_fd=dst)
            os.chown(name, uid, gid, dir_fd=dst, follow_symlinks=False)
            self.stats.whiteouts += 1
            return
        if stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
        elif stat.S_ISFIFO(mode):
            os.mkfifo(name, 0o600, dir_fd=dst)
        elif stat.S_ISREG(mode):
            self.file(src, dst, name, path, st)
            return
        else:  # sockets; devices cannot be made inside a sandbox
            self.stats.skipped.append(path)
            return
        os.chown(name, uid, gid, dir_fd=dst, follow_symlinks=False)
        if not stat.S_ISLNK(mode):
            os.chmod(name, stat.S_IMODE(mode), dir_fd=dst)
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst, follow_symlinks=False)

    def file(self, src: int, dst: int, name: str, path: str, st: os.stat_result) -> None:
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self.links:
            os.link(self.links[key], name, src_dir_fd=self.root, dst_dir_fd=dst)
            return
        mode = stat.S_IMODE(st.st_mode)
        if mode & (stat.S_ISUID | stat.S_ISGID):
            mode &= ~(stat.S_ISUID | stat.S_ISGID)
            self.stats.stripped_setuid.append(path)
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd_in = os.open(name, flags, dir_fd=src)
        try:
            if not stat.S_ISREG(os.fstat(fd_in).st_mode):
                raise DriverError("cannot snapshot the sandbox", f"{path} changed during the copy")
            out_flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd_out = os.open(name, out_flags, 0o600, dir_fd=dst)
            try:
                self.stats.bytes += _copy_data(fd_in, fd_out, st.st_size)
                _copy_overlay_xattrs(fd_in, fd_out)
                os.fchown(fd_out, self.shift(st.st_uid), self.shift(st.st_gid))
                os.fchmod(fd_out, mode)
                os.utime(fd_out, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(fd_out)
        finally:
            os.close(fd_in)
        if st.st_nlink > 1:
            self.links[key] = path


def _copy_data(src: int, dst: int, size: int) -> int:
    """Copy the data extents of ``src`` to the same offsets of ``dst``; holes stay holes."""
    copied = offset = 0
    while offset < size:
        try:
            start = os.lseek(src, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                break
            raise
        end = min(os.lseek(src, start, os.SEEK_HOLE), size)
        os.lseek(dst, start, os.SEEK_SET)
        pos = start
        while pos < end:
            n = os.sendfile(dst, src, pos, min(end - pos, _SENDFILE_MAX))
            if n == 0:
                raise DriverError("cannot snapshot the sandbox", "a file shrank during the copy")
            pos += n
        copied += end - start
        offset = end
    os.ftruncate(dst, size)
    return copied


def _copy_overlay_xattrs(src: int, dst: int) -> None:
    for name in OVERLAY_XATTRS:
        try:
            value = os.getxattr(src, name)
        except OSError as exc:
            if exc.errno in (errno.ENODATA, errno.ENOTSUP):
                continue
            raise
        os.setxattr(dst, name, value)
