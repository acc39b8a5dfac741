"""Who a command runs as: a ``user`` argument (the image config's ``User`` by default, sent by
the server) resolved through the image's own ``/etc/passwd`` and ``/etc/group``.

The forms are those of an image config: ``name``, ``uid``, ``name:group``, ``uid:gid`` (and
mixed). A name must exist in ``/etc/passwd`` (a group name in ``/etc/group``); a number need not
(then the group is 0, as container runtimes do). The supplementary groups are the groups that
list the user by name. The files are parsed here, not through libc's NSS: the agent runs on its
own bundled libc, and must not load the image's NSS modules.

The agent is root in the sandbox's user namespace with ``CAP_SETUID``/``CAP_SETGID``; the child
drops to the user between fork and exec (``spawn``'s ``creds``). Root (``0``/``root``) is no
change at all.
"""

from __future__ import annotations

import os

from .args import opt_str
from .protocol import BAD_REQUEST, OpError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Mapping, Optional, Tuple

MAX_ID = 65535  # the sandbox's user namespace maps 0..65535
PASSWD = "/etc/passwd"
GROUP = "/etc/group"


class Credentials:
    def __init__(self, uid: int, gid: int, groups: List[int], name: str, home: str) -> None:
        self.uid, self.gid, self.groups = uid, gid, groups
        self.name = name
        self.home = home

    def spawn_ids(self) -> Tuple[int, List[int], int]:
        """``(gid, supplementary groups, uid)`` as ``spawn`` takes them."""
        return self.gid, self.groups, self.uid


def resolve(spec: Optional[str]) -> Optional[Credentials]:
    """Credentials for ``spec``, or None for root (or no spec): nothing to change."""
    if not spec:
        return None
    user, _, group = spec.partition(":")
    if not user or (":" in spec and not group):
        raise OpError(BAD_REQUEST, f"user {spec!r} must be USER or USER:GROUP")
    passwd = _table(PASSWD)
    entry = _find(passwd, user)
    if entry is None:
        uid = _number(user, f"user {user!r} is not in the image's {PASSWD}")
        gid, name, home = 0, user, "/"
    else:
        uid, gid, name, home = int(entry[2]), int(entry[3]), entry[0], entry[5] or "/"
    groups_table = _table(GROUP)
    if group:
        found = _find(groups_table, group)
        gid = (
            int(found[2])
            if found is not None
            else _number(group, f"group {group!r} is not in the image's {GROUP}")
        )
    if uid == 0 and gid == 0:
        return None
    extra = sorted(
        {
            int(row[2])
            for row in groups_table
            if name in row[3].split(",") and row[2].isdigit() and int(row[2]) <= MAX_ID
        }
        | {gid}
    )
    return Credentials(uid, gid, extra, name, home)


def for_request(
    args: Mapping[str, Any], env: Dict[str, str], extra: Mapping[str, str]
) -> Optional[Credentials]:
    """The credentials of a request's ``user``; ``env`` (built from ``extra``, the request's
    own variables, over the sandbox's) gets the user's home as ``HOME`` when that is still
    root's default."""
    found = resolve(opt_str(args, "user"))
    if found is not None and "HOME" not in extra and env.get("HOME") == "/root":
        env["HOME"] = found.home
    return found


def _number(text: str, missing: str) -> int:
    if not text.isdigit():
        raise OpError(BAD_REQUEST, missing)
    value = int(text)
    if value > MAX_ID:
        raise OpError(BAD_REQUEST, f"id {value} is outside the sandbox's ids (0..{MAX_ID})")
    return value


def _find(rows: List[List[str]], key: str) -> Optional[List[str]]:
    """The row named ``key`` or, for a number, the first row with that id."""
    for row in rows:
        if row[0] == key:
            return row
    if key.isdigit():
        for row in rows:
            if row[2] == str(int(key)):
                return row
    return None


_CACHE: Dict[str, Tuple[float, int, List[List[str]]]] = {}


def _table(path: str) -> List[List[str]]:
    """The file's valid rows (split on ``:``), re-read when its mtime or size changes."""
    try:
        st = os.stat(path)
    except OSError:
        return []
    cached = _CACHE.get(path)
    if cached is not None and cached[:2] == (st.st_mtime, st.st_size):
        return cached[2]
    rows: List[List[str]] = []
    width = 7 if path == PASSWD else 4
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh.read(1 << 20).splitlines():
                fields = line.split(":")
                if len(fields) >= width and fields[2].isdigit() and int(fields[2]) <= MAX_ID:
                    if path != PASSWD or (fields[3].isdigit() and int(fields[3]) <= MAX_ID):
                        rows.append(fields)
    except OSError:
        return []
    _CACHE[path] = (st.st_mtime, st.st_size, rows)
    return rows
