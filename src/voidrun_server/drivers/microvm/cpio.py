"""A gzip'd newc cpio archive written from Python (the initramfs format; no ``cpio`` binary)."""

from __future__ import annotations

import gzip
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Entry", "write_newc"]

_MAGIC = b"070701"


@dataclass(frozen=True)
class Entry:
    """One archive member: ``data`` is the file body, or the target of a symlink."""

    name: str
    mode: int
    data: bytes = b""

    @classmethod
    def directory(cls, name: str, perm: int = 0o755) -> Entry:
        return cls(name, stat.S_IFDIR | perm)

    @classmethod
    def file(cls, name: str, data: bytes, perm: int = 0o644) -> Entry:
        return cls(name, stat.S_IFREG | perm, data)

    @classmethod
    def symlink(cls, name: str, target: str) -> Entry:
        return cls(name, stat.S_IFLNK | 0o777, target.encode())


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _header(ino: int, mode: int, nlink: int, size: int, namesize: int) -> bytes:
    # ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
    fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, namesize, 0)
    return _MAGIC + b"".join(b"%08X" % value for value in fields)


def write_newc(path: Path, entries: Iterable[Entry], *, level: int = 6) -> None:
    """Write ``entries`` (parents before children) and the trailer to ``path``, gzip'd.
    Owners are root, times are 0: the same inputs give the same bytes."""
    with open(path, "wb") as raw, gzip.GzipFile("", "wb", level, raw, mtime=0) as out:
        ino = 1
        for entry in [*entries, Entry("TRAILER!!!", 0)]:
            name = entry.name.encode() + b"\0"
            nlink = 2 if stat.S_ISDIR(entry.mode) else 1
            head = _header(ino, entry.mode, nlink, len(entry.data), len(name))
            out.write(head + name + _pad(len(head) + len(name)))
            out.write(entry.data + _pad(len(entry.data)))
            ino += 1
