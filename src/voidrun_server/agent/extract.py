"""Safe extraction of tar and zip archives into ``dest`` (zip-slip and friends refused).

Every entry is created relative to a directory fd of ``dest``, walking its parents one
component at a time with ``O_NOFOLLOW | O_DIRECTORY``. So nothing is ever written through a
symlink — neither one that already existed in ``dest`` nor one an earlier entry created — and
the checks cannot be raced by a path that changes between check and use. On top of that:

* names that are absolute or contain ``..`` are refused;
* a symlink entry is refused unless its target is relative, uses ``..`` only as a leading
  prefix, climbs no higher than the directory holding the link (so it resolves inside
  ``dest`` through real directories), and — against symlinks already in ``dest`` — really
  resolves inside ``dest`` when it is created;
* a hard-link entry must name a regular file already extracted inside ``dest``;
* devices, fifos and sockets are not created; an entry never replaces a directory;
* permission bits are kept except setuid/setgid/sticky; owners are not restored (the sandbox's
  root owns what it extracts). Directory modes are applied at the end, deepest first, so a
  read-only directory in the archive does not block its own contents.

A refused entry is skipped and reported; I/O errors (a full disk) abort the extraction.
"""

from __future__ import annotations

import errno
import os
import stat
import time
import zlib

from .fsutil import ToolError, check

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any, List, Tuple

    from .threads import Stop

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
COPY_BLOCK = 256 * 1024
MAX_LINK_TARGET = 4096


class Unsafe(Exception):
    """This entry must not be extracted; the message says why."""


def member_parts(name: str) -> List[str]:
    if "\0" in name:
        raise Unsafe("name contains a NUL byte")
    if name.startswith("/"):
        raise Unsafe("absolute path refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise Unsafe("path contains '..', refused")
    return parts


def check_link_target(parts: List[str], target: str) -> None:
    if not target or "\0" in target or len(target) > MAX_LINK_TARGET:
        raise Unsafe("invalid symlink target")
    if target.startswith("/"):
        raise Unsafe(f"symlink to absolute path {target!r} refused")
    ups, downs = 0, 0
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if downs:
                raise Unsafe(f"symlink target {target!r} has '..' after a name, refused")
            ups += 1
        else:
            downs += 1
    if ups > len(parts) - 1:
        raise Unsafe(f"symlink target {target!r} points outside the destination, refused")


class Extractor:
    def __init__(self, stop: Stop, root_fd: int, dest: str) -> None:
        self.stop = stop
        self.root = root_fd
        self.real_dest = os.path.realpath(dest)
        self.dir_modes: List[Tuple[List[str], int]] = []
        self.problems: List[str] = []
        self.count = 0

    def open_dir(self, parts: List[str], create: bool = True) -> int:
        """An fd of ``dest/parts...``, never following a symlink; creates missing directories."""
        fd = os.dup(self.root)
        try:
            for part in parts:
                try:
                    child = os.open(part, DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    child = os.open(part, DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise Unsafe(f"'{part}' is a symlink or not a directory, refused") from None
                    raise
                os.close(fd)
                fd = child
            return fd
        except BaseException:
            os.close(fd)
            raise

    def free_slot(self, dir_fd: int, name: str) -> None:
        """Remove a non-directory already at ``name`` (tar overwrites files, never directories)."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise Unsafe("would replace a directory, refused")
        os.unlink(name, dir_fd=dir_fd)

    def directory(self, parts: List[str], mode: int) -> None:
        os.close(self.open_dir(parts))
        self.dir_modes.append((parts, mode & 0o777))

    def file(self, parts: List[str], mode: int, src: IO[bytes], mtime: float) -> None:
        parent = self.open_dir(parts[:-1])
        try:
            self.free_slot(parent, parts[-1])
            fd = os.open(parts[-1], FILE_FLAGS, 0o600, dir_fd=parent)
            with os.fdopen(fd, "wb") as out:
                while True:
                    check(self.stop)
                    block = src.read(COPY_BLOCK)
                    if not block:
                        break
                    out.write(block)
                os.fchmod(out.fileno(), mode & 0o777)
            os.utime(parts[-1], (mtime, mtime), dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(parent)

    def symlink(self, parts: List[str], target: str) -> None:
        check_link_target(parts, target)
        # The lexical rule above cannot see symlinks that were in ``dest`` before us.
        resolved = os.path.realpath(os.path.join(self.real_dest, *parts[:-1], target))
        if os.path.commonpath([resolved, self.real_dest]) != self.real_dest:
            raise Unsafe(f"symlink target {target!r} resolves outside the destination, refused")
        parent = self.open_dir(parts[:-1])
        try:
            self.free_slot(parent, parts[-1])
            os.symlink(target, parts[-1], dir_fd=parent)
        finally:
            os.close(parent)

    def hardlink(self, parts: List[str], target: str) -> None:
        tparts = member_parts(target)
        if not tparts:
            raise Unsafe("hard link without a target, refused")
        try:
            source = self.open_dir(tparts[:-1], create=False)
        except FileNotFoundError:
            raise Unsafe(f"hard link target {target!r} does not exist") from None
        try:
            try:
                st = os.stat(tparts[-1], dir_fd=source, follow_symlinks=False)
            except FileNotFoundError:
                raise Unsafe(f"hard link target {target!r} does not exist") from None
            if not stat.S_ISREG(st.st_mode):
                raise Unsafe(f"hard link target {target!r} is not a regular file, refused")
            parent = self.open_dir(parts[:-1])
            try:
                self.free_slot(parent, parts[-1])
                os.link(
                    tparts[-1],
                    parts[-1],
                    src_dir_fd=source,
                    dst_dir_fd=parent,
                    follow_symlinks=False,
                )
            finally:
                os.close(parent)
        finally:
            os.close(source)

    def entry(self, name: str, kind: str, mode: int, target: str, src: Any, mtime: float) -> None:
        """One archive member; ``kind`` is dir, file, symlink, hardlink or other."""
        check(self.stop)
        try:
            parts = member_parts(name)
            if not parts:
                return  # "./": dest itself
            if kind == "dir":
                self.directory(parts, mode)
            elif kind == "file":
                self.file(parts, mode, src(), mtime)
            elif kind == "symlink":
                self.symlink(parts, target)
            elif kind == "hardlink":
                self.hardlink(parts, target)
            else:
                raise Unsafe("special file (device, fifo or socket) not extracted")
            self.count += 1
        except Unsafe as exc:
            self.problems.append(f"{name}: {exc}")

    def finish(self) -> None:
        for parts, mode in sorted(self.dir_modes, key=lambda item: -len(item[0])):
            try:
                fd = self.open_dir(parts, create=False)
            except (Unsafe, FileNotFoundError):
                continue
            try:
                os.fchmod(fd, mode)
            finally:
                os.close(fd)


def _tar_kind(member: Any) -> str:
    if member.isdir():
        return "dir"
    if member.isreg():
        return "file"
    if member.issym():
        return "symlink"
    return "hardlink" if member.islnk() else "other"


def _tar(ex: Extractor, archive: str) -> None:
    import tarfile

    try:
        with tarfile.open(archive, "r:*") as tar:
            while True:
                member = tar.next()
                if member is None:
                    break
                tar.members.clear()  # type: ignore[attr-defined]  # never looked up: flat memory
                ex.entry(
                    member.name,
                    _tar_kind(member),
                    member.mode,
                    member.linkname,
                    lambda m=member: tar.extractfile(m),
                    member.mtime,
                )
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise ToolError(f"{archive}: not a valid tar archive ({exc})") from None


def _zip_mtime(info: Any) -> float:
    try:
        return time.mktime(info.date_time + (0, 0, -1))
    except (OverflowError, ValueError):
        return time.time()


def _zip(ex: Extractor, archive: str) -> None:
    import zipfile

    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                mode = info.external_attr >> 16 if info.create_system == 3 else 0
                target = ""
                if info.is_dir() or stat.S_ISDIR(mode):
                    kind, mode = "dir", mode or 0o755
                elif stat.S_ISLNK(mode):
                    kind = "symlink"
                    if info.file_size > MAX_LINK_TARGET:
                        ex.problems.append(f"{info.filename}: invalid symlink target")
                        continue
                    target = os.fsdecode(zf.read(info))
                else:
                    kind, mode = "file", mode or 0o644
                opener = lambda i=info: zf.open(i)  # noqa: E731
                ex.entry(info.filename, kind, mode, target, opener, _zip_mtime(info))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as exc:
        raise ToolError(f"{archive}: not a valid zip archive ({exc})") from None
    except (NotImplementedError, RuntimeError) as exc:  # unsupported method, encrypted entry
        raise ToolError(f"{archive}: {exc}") from None


def extract(stop: Stop, archive: str, dest: str, kind: str) -> Tuple[int, List[str]]:
    """Extract ``archive`` into ``dest`` (created if missing); (entries, refused entries)."""
    os.stat(archive)  # a missing archive is reported as such before ``dest`` is created
    os.makedirs(dest, exist_ok=True)
    root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        ex = Extractor(stop, root, dest)
        (_zip if kind == "zip" else _tar)(ex, archive)
        ex.finish()
        return ex.count, ex.problems
    finally:
        os.close(root)
