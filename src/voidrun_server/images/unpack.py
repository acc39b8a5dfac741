"""Apply image layers to a root filesystem, confined to it, with OCI whiteouts and limits.

Every path is created relative to a directory file descriptor reached from the root one
component at a time with ``O_NOFOLLOW``: a member whose parent is a symlink (or anything but a
directory) is refused, so no layer can write through a link to the host. Owners are set to
``uid_base + N`` while writing (the same shift ``images/shift.py`` does to ``code``), so the tree
needs no second walk.

Refused, failing the build with the reason: absolute names and ``..`` (in names and hard-link
targets), device nodes, ids outside ``0..65535``, relative symlinks that climb above the root,
hard links to something missing or outside the tree, more bytes than the budget (counted while
writing: a bomb stops early; every entry costs ``ENTRY_COST`` too, so millions of empty files
stop as well). Setuid/setgid bits on files are stripped (``strip``) or refused (``reject``);
FIFOs are kept. Absolute symlinks are kept: inside the sandbox they resolve within its root,
and nothing here ever follows them.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .cas import ContentStore
from .entries import CHUNK, Entry, UnpackError

ENTRY_COST = 512  # bytes of budget every entry costs, whatever its size
ID_COUNT = 65536
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SUID = stat.S_ISUID | stat.S_ISGID


@dataclass
class Limits:
    max_bytes: int
    max_layers: int
    setuid: str = "strip"  # or "reject"


@dataclass
class UnpackStats:
    bytes: int = 0
    entries: int = 0
    stripped_setuid: list[str] = field(default_factory=list)
    deduplicated: int = 0


def clean_name(name: str, what: str = "path") -> str:
    """``./usr//bin/`` → ``usr/bin``; absolute names and ``..`` are refused."""
    if "\x00" in name:
        raise UnpackError(f"invalid {what}", repr(name))
    if name.startswith("/"):
        raise UnpackError(f"absolute {what} in the archive", name)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnpackError(f"'..' in an archive {what}", name)
    return "/".join(parts)


class RootfsWriter:
    """Writes entries into ``rootfs`` (an empty directory it owns) layer after layer."""

    def __init__(
        self,
        rootfs: Path,
        *,
        limits: Limits,
        uid_base: int,
        store: ContentStore | None,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> None:
        self.limits = limits
        self.uid_base = uid_base
        self.store = store
        self.cancelled = cancelled
        self.stats = UnpackStats()
        self._root = os.open(rootfs, _DIR_FLAGS)
        os.fchown(self._root, uid_base, uid_base)
        os.fchmod(self._root, 0o755)
        self._parent: tuple[str, int] | None = None  # the last parent opened: (path, fd)
        self._layer_paths: set[str] = set()

    def close(self) -> None:
        self._forget_parent()
        os.close(self._root)

    def ensure_dir(self, name: str) -> None:
        """Make directory ``name`` (and its parents) unless it exists; a path through a
        symlink is left alone (the image has its own idea of that directory)."""
        try:
            fd = self._walk(clean_name(name), create=True)
        except UnpackError:
            return
        if fd is not None and fd != self._root:
            os.close(fd)

    # --- layers -----------------------------------------------------------------------------

    def apply(self, entries: Iterable[Entry]) -> None:
        """One layer: entries in order; whiteouts remove what earlier layers made."""
        self._layer_paths = set()
        for entry in entries:
            if self.cancelled():
                raise UnpackError("build cancelled", "the server is shutting down")
            self._charge(ENTRY_COST)
            self.stats.entries += 1
            name = clean_name(entry.name)
            if not name:
                continue  # the root itself: ours already
            parent, base = posixpath.split(name)
            if base == OPAQUE:
                self._opaque(parent)
            elif base.startswith(WHITEOUT):
                self._whiteout(parent, base[len(WHITEOUT) :])
            else:
                self._entry(entry, name, parent, base)
                self._layer_paths.add(name)
        self._forget_parent()

    def _opaque(self, parent: str) -> None:
        fd = self._open_parent(parent, create=False)
        if fd is None:
            return
        prefix = f"{parent}/" if parent else ""
        for child in os.listdir(fd):
            if f"{prefix}{child}" not in self._layer_paths:
                _remove_at(fd, child)
                self._forget_parent_under(f"{prefix}{child}")

    def _whiteout(self, parent: str, target: str) -> None:
        if not target or target in (".", ".."):
            raise UnpackError("invalid whiteout", f"{parent}/{WHITEOUT}{target}")
        fd = self._open_parent(parent, create=False)
        if fd is not None:
            _remove_at(fd, target)
            self._forget_parent_under(f"{parent}/{target}" if parent else target)

    # --- one entry ----------------------------------------------------------------------------

    def _entry(self, entry: Entry, name: str, parent: str, base: str) -> None:
        if entry.kind == "device":
            raise UnpackError("device node in the image", f"/{name}")
        if entry.kind == "other":
            raise UnpackError("unsupported archive member type", f"/{name}")
        for what, value in (("uid", entry.uid), ("gid", entry.gid)):
            if not 0 <= value < ID_COUNT:
                raise UnpackError(f"{what} out of range", f"/{name}: {what} {value}")
        mode = stat.S_IMODE(entry.mode)
        if entry.kind == "file" and mode & _SUID:
            if self.limits.setuid == "reject":
                raise UnpackError("setuid/setgid file in the image", f"/{name}")
            self.stats.stripped_setuid.append(f"/{name}")
            mode &= ~_SUID
        fd = self._open_parent(parent, create=True)
        assert fd is not None
        existing = _lstat_at(fd, base)
        if existing is not None and not (entry.kind == "dir" and stat.S_ISDIR(existing.st_mode)):
            _remove_at(fd, base)
            self._forget_parent_under(name)
        uid, gid = self.uid_base + entry.uid, self.uid_base + entry.gid
        if entry.kind == "dir":
            if existing is None or not stat.S_ISDIR(existing.st_mode):
                os.mkdir(base, 0o700, dir_fd=fd)
            os.chown(base, uid, gid, dir_fd=fd, follow_symlinks=False)
            os.chmod(base, mode, dir_fd=fd)
        elif entry.kind == "file":
            self._file(entry, fd, base, mode, uid, gid)
        elif entry.kind == "symlink":
            _check_symlink(name, entry.linkname)
            os.symlink(entry.linkname, base, dir_fd=fd)
            os.chown(base, uid, gid, dir_fd=fd, follow_symlinks=False)
            _set_mtime(fd, base, entry.mtime)
        elif entry.kind == "hardlink":
            self._hardlink(name, entry.linkname, fd, base)
        elif entry.kind == "fifo":
            os.mkfifo(base, 0o600, dir_fd=fd)
            os.chown(base, uid, gid, dir_fd=fd, follow_symlinks=False)
            os.chmod(base, mode, dir_fd=fd)

    def _file(self, entry: Entry, dir_fd: int, base: str, mode: int, uid: int, gid: int) -> None:
        assert entry.read is not None
        fd = os.open(
            base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd
        )
        digest = self.store.hasher() if self.store is not None else None
        try:
            while chunk := entry.read(CHUNK):
                self._charge(len(chunk))
                if self.cancelled():
                    raise UnpackError("build cancelled", "the server is shutting down")
                if digest is not None:
                    digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
            os.utime(fd, (entry.mtime, entry.mtime))
        finally:
            os.close(fd)
        if self.store is not None and digest is not None:
            key = self.store.key(digest.hexdigest(), mode, uid, gid, entry.mtime)
            if self.store.share(key, dir_fd, base):
                self.stats.deduplicated += 1

    def _hardlink(self, name: str, linkname: str, dir_fd: int, base: str) -> None:
        target = clean_name(linkname, "hard link target")
        tparent, tbase = posixpath.split(target)
        if not tbase:
            raise UnpackError("hard link to the image root", f"/{name}")
        tfd = self._open_other(tparent)
        try:
            st = _lstat_at(tfd, tbase) if tfd is not None else None
            if st is None or stat.S_ISDIR(st.st_mode):
                raise UnpackError("hard link to a missing file", f"/{name} -> /{target}")
            if st.st_mode & _SUID and self.limits.setuid == "reject":
                raise UnpackError("setuid/setgid file in the image", f"/{name}")
            assert tfd is not None
            os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=dir_fd, follow_symlinks=False)
        finally:
            if tfd is not None and tfd not in (self._root, self._cached_fd()):
                os.close(tfd)

    def _charge(self, n: int) -> None:
        self.stats.bytes += n
        if self.stats.bytes > self.limits.max_bytes:
            raise UnpackError(
                "image too large",
                f"its contents exceed VOIDRUN_IMAGE_MAX_BYTES ({self.limits.max_bytes} bytes)",
            )

    # --- confined directory walking ------------------------------------------------------------

    def _cached_fd(self) -> int | None:
        return self._parent[1] if self._parent is not None else None

    def _forget_parent(self) -> None:
        if self._parent is not None:
            os.close(self._parent[1])
            self._parent = None

    def _forget_parent_under(self, name: str) -> None:
        if self._parent is not None and (
            self._parent[0] == name or self._parent[0].startswith(f"{name}/")
        ):
            self._forget_parent()

    def _open_parent(self, parent: str, *, create: bool) -> int | None:
        """The directory ``parent`` (relative to the root) as an fd, reached without following
        a symlink; missing directories are made (0755, root-owned) when ``create``."""
        if not parent:
            return self._root
        if self._parent is not None and self._parent[0] == parent:
            return self._parent[1]
        fd = self._walk(parent, create)
        if fd is None:
            return None
        self._forget_parent()
        self._parent = (parent, fd)
        return fd

    def _open_other(self, parent: str) -> int | None:
        if not parent:
            return self._root
        if self._parent is not None and self._parent[0] == parent:
            return self._parent[1]
        return self._walk(parent, create=False)

    def _walk(self, parent: str, create: bool) -> int | None:
        fd = self._root
        try:
            for part in parent.split("/"):
                try:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        return None
                    os.mkdir(part, 0o755, dir_fd=fd)
                    os.chown(part, self.uid_base, self.uid_base, dir_fd=fd, follow_symlinks=False)
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise UnpackError(
                            "archive path goes through a symlink or a file",
                            f"/{parent} (a layer may not write through a link)",
                        ) from None
                    raise
                if fd != self._root:
                    os.close(fd)
                fd = nxt
        except BaseException:
            if fd != self._root:
                os.close(fd)
            raise
        return fd


def _check_symlink(name: str, target: str) -> None:
    if not target or "\x00" in target:
        raise UnpackError("invalid symlink", f"/{name}")
    if target.startswith("/"):
        return  # resolves inside the sandbox's own root
    depth = name.count("/")  # directories above the link, within the image
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise UnpackError("symlink escapes the image", f"/{name} -> {target}")
        elif part not in ("", "."):
            depth += 1


def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove_at(dir_fd: int, name: str) -> None:
    st = _lstat_at(dir_fd, name)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)  # fd-based on Linux: never follows a symlink
    else:
        os.unlink(name, dir_fd=dir_fd)


def _set_mtime(dir_fd: int, name: str, mtime: float) -> None:
    try:
        os.utime(name, (mtime, mtime), dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        pass  # cosmetic
