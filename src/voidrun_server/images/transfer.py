"""An image's files as one tar stream, for a node that lacks the image to copy it from one that
holds it (``node/images.py``).

The sender walks the image's root filesystem with :func:`entries.dir_entries` (file
descriptors, nothing followed) and writes each entry's tar header and data as it goes, never
more than one chunk in memory. Owners are written unshifted (the image's ``uid_base``
subtracted), so the receiver shifts them again exactly as an import does: it reads the stream
with :func:`entries.tar_entries` through ``images/unpack.RootfsWriter``, with an import's
limits and checks (``importer.receive_image``). A sender is another node holding the same
token, but the receiver still trusts the stream no more than a user's archive.

Blocking (run both sides in worker threads).
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .entries import CHUNK, Entry, Readable, UnpackError, dir_entries

BLOCK = tarfile.BLOCKSIZE
_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def export_tar(rootfs: Path, uid_base: int) -> Iterator[bytes]:
    """The tar stream of ``rootfs`` (whose owners are shifted by ``uid_base``), in chunks.
    Device nodes are left out: a built image may hold a few under ``/dev``, but a sandbox gets
    its own ``/dev`` and an import refuses them."""
    for entry in dir_entries(str(rootfs)):
        if entry.kind != "device":
            yield from _member(entry, uid_base)
    yield END


END = b"\0" * (2 * BLOCK)  # a tar archive's end: what a stream cut short lacks


def _member(entry: Entry, uid_base: int) -> Iterator[bytes]:
    kind = _TYPES.get(entry.kind)
    if kind is None:
        raise UnpackError("the image holds a file that cannot be copied", f"/{entry.name}")
    info = tarfile.TarInfo(entry.name)
    info.type = kind
    info.mode = entry.mode
    info.uid, info.gid = entry.uid - uid_base, entry.gid - uid_base
    if info.uid < 0 or info.gid < 0:
        raise UnpackError("a file of the image is not owned by its uid range", f"/{entry.name}")
    info.mtime = int(entry.mtime)
    info.linkname = entry.linkname
    info.size = entry.size if entry.kind == "file" else 0
    yield info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    if entry.kind != "file":
        return
    assert entry.read is not None
    left = info.size
    while left > 0:  # exactly the size the header says, even if the file changed since
        chunk = entry.read(min(CHUNK, left))
        if not chunk:
            chunk = b"\0" * min(CHUNK, left)
        yield chunk
        left -= len(chunk)
    if info.size % BLOCK:
        yield b"\0" * (BLOCK - info.size % BLOCK)


class EndChecked:
    """A stream whose last bytes are kept, to tell a complete archive from one cut short
    between two members (tarfile takes either for the end)."""

    def __init__(self, stream: Readable) -> None:
        self._stream = stream
        self._tail = b""

    def read(self, n: int = -1, /) -> bytes:
        data = self._stream.read(n)
        self._tail = (self._tail + data)[-len(END) :]
        return data

    def check_end(self) -> None:
        """Read what tarfile left (at most a few blocks) and require the archive's end."""
        for _ in range(64):
            if not self.read(BLOCK * 20):
                break
        if self._tail != END:
            raise UnpackError("the image stream ended before the archive did", "copy it again")


class ChunkReader:
    """A file-like ``read(n)`` over an iterator of byte chunks (an HTTP body as it arrives)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = bytearray()
        self._done = False
        self.received = 0

    def read(self, n: int = -1) -> bytes:
        while not self._done and (n < 0 or len(self._buffer) < n):
            chunk = next(self._chunks, None)
            if chunk is None:
                self._done = True
                break
            self._buffer += chunk
            self.received += len(chunk)
        if n < 0:
            n = len(self._buffer)
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out
