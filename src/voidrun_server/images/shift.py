"""Shift the ownership of an image tree into a sandbox's user-namespace id range.

Sandboxes run as root inside an unprivileged user namespace that maps uid/gid 0 to host id
``offset`` (and N to ``offset + N`` for ``count`` ids). A file that is owned by host uid 0 shows
up inside such a namespace as ``nobody`` and root there could not, for instance, read
``/etc/shadow``. So once, at image build time, every file owned by N is re-owned by
``offset + N``. The image is then the same, seen from inside the namespace, as it was as built.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

__all__ = ["OwnershipShiftError", "shift_ownership"]

# security.capability layout (see linux/capability.h): a little-endian magic/flags word, two
# (permitted, inheritable) pairs, and, in revision 3, the namespace root uid the caps belong to.
_CAP_XATTR = "security.capability"
_CAP_REVISION_MASK = 0xFF000000
_CAP_REVISION_2 = 0x02000000
_CAP_REVISION_3 = 0x03000000
_CAP_V2_SIZE = 20
_CAP_V3_SIZE = 24


class OwnershipShiftError(ValueError):
    """The tree holds something that cannot be mapped into the target id range."""


def shift_ownership(root: Path, offset: int, *, count: int = 65536) -> int:
    """Re-own every file under ``root`` (``root`` included) from id N to ``offset + N``.

    Why each detail matters:

    * ``lchown`` (never following symlinks): an image's absolute symlinks point at the *host*
      filesystem while we walk it from outside; following one would re-own host files.
    * chown clears setuid/setgid bits (the kernel's defence against ownership games), so the
      mode is put back afterwards; ``su``/``passwd`` would otherwise silently stop working.
    * chown also drops file capabilities. A revision-2 capability set is only honoured where
      host root is mapped, so it is rewritten as revision 3 with root uid ``offset``, which is
      what the kernel honours inside the sandbox's namespace.
    * Hard links are visited once per path but must be shifted once per inode.
    * The walk stays on one filesystem: a leftover bind mount of the host's ``/dev`` or
      ``/proc`` must never be re-owned. Meeting one is an error, not something to skip.

    Ids must lie in ``[0, count)``; anything else could not be mapped and is refused (this also
    makes shifting an already shifted tree fail loudly instead of shifting twice).

    Returns the number of inodes changed.
    """
    if offset < 0 or count <= 0:
        raise OwnershipShiftError(f"invalid id range: offset={offset} count={count}")
    root_st = os.lstat(root)
    if stat.S_ISLNK(root_st.st_mode) or not stat.S_ISDIR(root_st.st_mode):
        raise OwnershipShiftError(f"{root} is not a directory")
    seen: set[int] = set()
    changed = 0
    stack: list[str] = [os.fspath(root)]
    _shift_one(os.fspath(root), root_st, offset, count, seen)
    changed += 1
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if st.st_dev != root_st.st_dev:
                    raise OwnershipShiftError(
                        f"{entry.path} is on another filesystem (a leftover mount?); "
                        "unmount it before shifting ownership"
                    )
                if _shift_one(entry.path, st, offset, count, seen):
                    changed += 1
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
    return changed


def _shift_one(path: str, st: os.stat_result, offset: int, count: int, seen: set[int]) -> bool:
    """Shift one inode unless an earlier hard link to it has already been shifted."""
    if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
        if st.st_ino in seen:
            return False
        seen.add(st.st_ino)
    for kind, value in (("uid", st.st_uid), ("gid", st.st_gid)):
        if not 0 <= value < count:
            raise OwnershipShiftError(
                f"{path}: {kind} {value} is outside 0..{count - 1} and cannot be mapped "
                "(was this tree already shifted?)"
            )
    is_link = stat.S_ISLNK(st.st_mode)
    caps = None if is_link or not stat.S_ISREG(st.st_mode) else _read_caps(path)
    os.chown(path, offset + st.st_uid, offset + st.st_gid, follow_symlinks=False)
    if not is_link:
        if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(path, stat.S_IMODE(st.st_mode))
        if caps is not None:
            os.setxattr(path, _CAP_XATTR, _caps_for_root(caps, offset))
    return True


def _read_caps(path: str) -> bytes | None:
    try:
        return os.getxattr(path, _CAP_XATTR, follow_symlinks=False)
    except OSError:  # ENODATA (no caps) or a filesystem without xattrs
        return None


def _caps_for_root(value: bytes, root_uid: int) -> bytes:
    """Return ``value`` (revision 2 or 3) as a revision-3 capability set owned by ``root_uid``."""
    if len(value) < _CAP_V2_SIZE:
        raise OwnershipShiftError(f"unexpected {_CAP_XATTR} value of {len(value)} bytes")
    (magic,) = struct.unpack_from("<I", value)
    revision = magic & _CAP_REVISION_MASK
    if revision not in (_CAP_REVISION_2, _CAP_REVISION_3):
        raise OwnershipShiftError(f"unsupported {_CAP_XATTR} revision {revision:#x}")
    magic = (magic & ~_CAP_REVISION_MASK) | _CAP_REVISION_3
    body = struct.pack("<I", magic) + value[4:_CAP_V2_SIZE]
    packed = body + struct.pack("<I", root_uid)
    assert len(packed) == _CAP_V3_SIZE
    return packed
