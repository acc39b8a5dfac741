"""What an image layer is made of, read from a tar stream or a directory, and nothing followed.

Both readers yield :class:`Entry` objects that ``images.unpack`` applies to a root filesystem.
Neither reader trusts its input: a tar member's name is only a string here (checked by the
writer), and a directory is walked through file descriptors with ``O_NOFOLLOW``, so a tenant
swapping a directory for a symlink while the walk runs cannot make it read host files.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

from .progress import ImageBuildError

Kind = Literal["file", "dir", "symlink", "hardlink", "fifo", "device", "other"]

# tarfile reads a pax or GNU long-name header in one read(); file data is read in small blocks.
# A single read larger than this can only be such a header, and a header that big is an attack.
MAX_HEADER_READ = 16 * 2**20
CHUNK = 1024 * 1024


class UnpackError(ImageBuildError):
    """The image's contents break a rule (hostile archive, over a limit): the build fails."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(f"{message}: {details}" if details else message)


@dataclass
class Entry:
    name: str
    """Path inside the image as the source spells it (``./usr/bin/x``, ``/etc``...)."""
    kind: Kind
    mode: int
    uid: int
    gid: int
    mtime: float
    linkname: str = ""
    """Symlink target, or the path a hard link points at."""
    read: Callable[[int], bytes] | None = None
    """File data, for ``kind == "file"``: ``read(n)`` like a file object."""
    size: int = 0
    """File size in bytes, for ``kind == "file"``."""


def _kind_of_member(member: tarfile.TarInfo) -> Kind:
    if member.isreg():
        return "file"
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hardlink"
    if member.isfifo():
        return "fifo"
    if member.ischr() or member.isblk():
        return "device"
    return "other"


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class LimitedReader:
    """Decompressed tar bytes with a ceiling: the image's byte budget, and no giant header."""

    def __init__(self, raw: Readable, budget: int) -> None:
        self._raw = raw
        self._left = budget

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > MAX_HEADER_READ:
            raise UnpackError(
                "archive header too large", f"a tar header of more than {MAX_HEADER_READ} bytes"
            )
        data = self._raw.read(n)
        self._left -= len(data)
        if self._left < 0:
            raise UnpackError(
                "image too large",
                "the layer expands beyond VOIDRUN_IMAGE_MAX_BYTES (stopped while reading it)",
            )
        return data


def tar_entries(stream: Readable, budget: int) -> Iterator[Entry]:
    """Entries of an uncompressed tar stream, read once, front to back, at most ``budget``
    bytes. Members are forgotten as soon as they are consumed (a stream of millions of tiny
    members must not grow the process)."""
    limited = LimitedReader(stream, budget)
    try:
        archive = tarfile.open(fileobj=limited, mode="r|")  # type: ignore[call-overload]
    except tarfile.TarError as exc:
        raise UnpackError("not a tar archive", str(exc)) from None
    with archive:
        while True:
            try:
                member = archive.next()
            except tarfile.TarError as exc:
                raise UnpackError("corrupt tar archive", str(exc)) from None
            if member is None:
                return
            archive.members.clear()  # stream mode keeps every member otherwise
            kind = _kind_of_member(member)
            reader = None
            if kind == "file":
                data = archive.extractfile(member)
                assert data is not None
                reader = _checked_read(data.read)
            yield Entry(
                name=member.name,
                kind=kind,
                mode=member.mode,
                uid=member.uid,
                gid=member.gid,
                mtime=member.mtime,
                linkname=member.linkname,
                read=reader,
                size=member.size if kind == "file" else 0,
            )


def _checked_read(read: Callable[[int], bytes]) -> Callable[[int], bytes]:
    """A member's ``read`` whose tar errors (the archive ends inside it) are the build's."""

    def checked(n: int) -> bytes:
        try:
            return read(n)
        except tarfile.TarError as exc:
            raise UnpackError("corrupt tar archive", str(exc)) from None

    return checked


def dir_entries(root: str) -> Iterator[Entry]:
    """Entries of a root filesystem directory, walked through file descriptors: symlinks are
    read, never followed; hard links within the tree come back as ``hardlink`` entries; a
    directory on another filesystem (a mount) is refused."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        top = os.open(root, flags)
    except OSError as exc:
        raise UnpackError("cannot read the image directory", f"{root}: {exc.strerror}") from None
    seen: dict[tuple[int, int], str] = {}
    try:
        device = os.fstat(top).st_dev
        yield from _walk(top, "", device, seen)
    finally:
        os.close(top)


def _walk(
    dir_fd: int, prefix: str, device: int, seen: dict[tuple[int, int], str]
) -> Iterator[Entry]:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    for name in sorted(os.listdir(dir_fd)):
        path = f"{prefix}{name}"
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            if st.st_dev != device:
                raise UnpackError("image directory holds a mount", f"/{path}")
            yield _of(path, "dir", st)
            child = os.open(name, flags | os.O_DIRECTORY, dir_fd=dir_fd)
            try:
                yield from _walk(child, f"{path}/", device, seen)
            finally:
                os.close(child)
        elif stat.S_ISLNK(mode):
            target = os.readlink(name, dir_fd=dir_fd)
            yield _of(path, "symlink", st, linkname=target)
        elif stat.S_ISREG(mode):
            first = seen.get((st.st_dev, st.st_ino)) if st.st_nlink > 1 else None
            if first is not None:
                yield _of(path, "hardlink", st, linkname=first)
                continue
            if st.st_nlink > 1:
                seen[(st.st_dev, st.st_ino)] = path
            fd = os.open(name, flags | os.O_NONBLOCK, dir_fd=dir_fd)  # never hang on a FIFO
            with os.fdopen(fd, "rb") as fh:
                yield _of(path, "file", st, read=fh.read)
        elif stat.S_ISFIFO(mode):
            yield _of(path, "fifo", st)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            yield _of(path, "device", st)
        # sockets are left out: they are meaningless in an image


def _of(
    path: str,
    kind: Kind,
    st: os.stat_result,
    linkname: str = "",
    read: Callable[[int], bytes] | None = None,
) -> Entry:
    mode = stat.S_IMODE(st.st_mode)
    size = st.st_size if kind == "file" else 0
    return Entry(path, kind, mode, st.st_uid, st.st_gid, st.st_mtime, linkname, read, size)
