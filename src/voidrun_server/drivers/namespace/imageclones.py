"""Detached clones of image directories, kept so that each sandbox's image view is cloned from
one of them instead of from the image's path.

Cloning a directory's mount (``open_tree(OPEN_TREE_CLONE)``, even without ``AT_RECURSIVE``)
makes the kernel look at every mount attached below the *source mount* for locked ones
(``has_locked_children``). Images usually live on the same filesystem mount as the data
directory, whose children are every sandbox's disk and image views: the clone took 0.1 ms
beside no sandbox and 0.5–0.7 ms beside 1,000. A detached clone has no children, and since
Linux 6.15 a detached mount can itself be cloned. So the first clone of an image comes from its
path and is kept (one fd per image, at most ``LIMIT``, least recently used dropped first); the
next ones are clones of the kept one.

A kept clone is used only while it still is the directory at the image's path (same device and
inode as a fresh ``stat``): an image deleted and built again at the same path gets a new one.
Where the kernel refuses to clone a detached mount (EINVAL before 6.15), every clone comes from
the path, as before. Blocking: called from worker threads.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections import OrderedDict
from pathlib import Path

from voidrun_server.drivers.namespace.syscalls import syscall

__all__ = ["clone_image"]

LIMIT = 256
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_OPEN_TREE_CLONE = 1
_FLAGS = _OPEN_TREE_CLONE | os.O_CLOEXEC

_kept: OrderedDict[bytes, tuple[int, int, int]] = OrderedDict()  # path -> (fd, dev, ino)
_lock = threading.Lock()
_nested = [True]  # whether this kernel clones a detached mount


def _open_tree(number: int, dirfd: int, path: bytes, flags: int) -> int:
    return syscall(number, ctypes.c_int(dirfd), ctypes.c_char_p(path), ctypes.c_uint(flags))


def _drop(path: bytes) -> None:
    entry = _kept.pop(path, None)
    if entry is not None:
        os.close(entry[0])


def clone_image(source: Path, open_tree: int) -> int:
    """A new detached clone of the directory ``source`` (an fd the caller closes); raises
    OSError. ``open_tree``: the syscall's number on this machine."""
    path = os.fsencode(source)
    with _lock:
        now = os.stat(path)
        kept = _kept.get(path)
        if kept is not None and kept[1:] != (now.st_dev, now.st_ino):
            _drop(path)
            kept = None
        if not _nested[0]:
            return _open_tree(open_tree, _AT_FDCWD, path, _FLAGS)
        if kept is None:
            fd = _open_tree(open_tree, _AT_FDCWD, path, _FLAGS)
            cloned = os.fstat(fd)
            if (cloned.st_dev, cloned.st_ino) != (now.st_dev, now.st_ino):
                return fd  # replaced between the stat and the clone: use it once, keep none
            kept = (fd, now.st_dev, now.st_ino)
            _kept[path] = kept
            while len(_kept) > LIMIT:
                _drop(next(iter(_kept)))
        _kept.move_to_end(path)
        try:
            return _open_tree(open_tree, kept[0], b"", _FLAGS | _AT_EMPTY_PATH)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            _nested[0] = False  # an older kernel: clone from the path from now on
            for name in list(_kept):
                _drop(name)
        return _open_tree(open_tree, _AT_FDCWD, path, _FLAGS)
