"""Root inside the sandbox = an unprivileged uid range on the host, one range per sandbox.

bubblewrap runs as host uid ``S`` (the sandbox's own base, ``uidrange.py``) and creates the
sandbox's user namespace itself (``--unshare-user``), so that namespace is *owned by S*: the
kernel's per-user counters (inotify, mqueue, pipe buffers, user namespaces, ...) are charged
to S, i.e. per sandbox. With ``--userns-block-fd`` bwrap then waits while the server, as host
root, writes a full range mapping (``0 S 65536``) into the child's ``uid_map``/``gid_map``.
Inside, uid 0..65535 exist (so ``apt`` can drop to ``_apt``, ``chown`` works), and on the host
every one of them is an ordinary unprivileged uid: ``S + N``. This replaces the
"holder process + ``--userns FD``" recipe (research/userns-recipe.md) with the same result and
one process less per create. ``setgroups`` is left allowed so ``su``/``setpriv`` work inside.

bwrap must *start* as ``S``: started as host root it would be unmapped in its own
namespace (``Creating newroot failed: EOVERFLOW``). Dropping to ``S`` in
``subprocess.Popen(user=...)`` forces CPython onto the fork() path instead of vfork(), and
fork() copies the server's page tables: 2.7 ms for a small process but 16 ms at 300 MB RSS,
measured here. So the default wraps bwrap in ``setpriv`` (util-linux), a constant ~1.7 ms exec
on the vfork path; ``user=`` is the fallback when setpriv is not installed.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

__all__ = ["IdMap", "find_setpriv", "privilege_drop_prefix"]


@dataclass(frozen=True)
class IdMap:
    """``inside 0 .. count-1`` <-> ``host base .. base+count-1`` for both uids and gids."""

    base: int
    count: int = 65536

    def __post_init__(self) -> None:
        if self.base <= 0 or self.count <= 0 or self.base + self.count > 2**32 - 1:
            raise ValueError(f"invalid id range {self.base}+{self.count}")

    @property
    def line(self) -> str:
        return f"0 {self.base} {self.count}\n"

    def host_uid(self, inside: int) -> int:
        return self.base + inside

    def write(self, pid: int) -> None:
        """Install the mapping for the (blocked) namespace of ``pid``; needs host root."""
        for name in ("uid_map", "gid_map"):
            fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, self.line.encode())
            finally:
                os.close(fd)


def find_setpriv() -> str | None:
    """util-linux's setpriv, or None (then bwrap is spawned on the slower fork() path)."""
    return shutil.which("setpriv", path="/usr/bin:/bin:/usr/sbin:/sbin")


def privilege_drop_prefix(setpriv: str | None, uid: int, gid: int) -> list[str] | None:
    """argv prefix that execs the rest as ``uid:gid`` with no groups; None if unavailable."""
    if setpriv is None:
        return None
    return [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
