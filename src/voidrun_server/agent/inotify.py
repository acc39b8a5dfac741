"""A minimal inotify binding (ctypes, stdlib only): init, add/remove watches, parse events.

The fd is non-blocking so the agent's loop can read it (``fdio.Reader``); reads never touch the
disk (the kernel hands over queued events), so they run on the loop.
"""

from __future__ import annotations

import os
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List, Tuple

IN_MODIFY, IN_ATTRIB, IN_MOVED_FROM, IN_MOVED_TO = 0x2, 0x4, 0x40, 0x80
IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF = 0x100, 0x200, 0x400, 0x800
IN_Q_OVERFLOW, IN_IGNORED, IN_ISDIR = 0x4000, 0x8000, 0x40000000
IN_DONT_FOLLOW, IN_EXCL_UNLINK = 0x2000000, 0x4000000
MASK = (
    IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
    | IN_DELETE_SELF | IN_MOVE_SELF | IN_DONT_FOLLOW | IN_EXCL_UNLINK
)  # fmt: skip
EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name


class Inotify:
    def __init__(self) -> None:
        import ctypes  # on first use: it is a visible part of agent start-up

        self._ctypes = ctypes
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.fd = self._check(self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC), "")

    def _check(self, result: int, path: str) -> int:
        if result < 0:
            err = self._ctypes.get_errno()
            raise OSError(err, os.strerror(err), path or None)
        return result

    def add(self, path: str) -> int:
        return self._check(self._libc.inotify_add_watch(self.fd, os.fsencode(path), MASK), path)

    def remove(self, wd: int) -> None:
        self._libc.inotify_rm_watch(self.fd, wd)  # fails harmlessly if already gone


def parse_events(data: bytes) -> List[Tuple[int, int, int, str]]:
    """``(wd, mask, cookie, name)`` of each event in what one read of the fd returned."""
    events, offset = [], 0
    while offset + EVENT.size <= len(data):
        wd, mask, cookie, length = EVENT.unpack_from(data, offset)
        raw_name = data[offset + EVENT.size : offset + EVENT.size + length]
        events.append((wd, mask, cookie, os.fsdecode(raw_name.rstrip(b"\0"))))
        offset += EVENT.size + length
    return events
