"""Host-wide claims: servers (and node daemons) on one host never share a uid area, a sandbox
subnet or a cgroup name.

Several servers on one host each keep their own data dir (``serverlock.py`` keeps one process
per data dir), and the names derived from it are theirs alone: the nftables table
``voidrun_<tag>``, the gateway bridge ``vrgw<tag>`` and the resolver's files (``<tag>``: a hash
of the state dir), the uid markers and run directories. Three things are *settings* and could
collide: the host uid area (``VOIDRUN_SANDBOX_UID_BASE`` .. + ``VOIDRUN_SANDBOX_UID_RANGES`` x
65536), the sandbox subnet (``VOIDRUN_SANDBOX_SUBNET``; its first address is the gateway and
the resolver) and the cgroup names (``VOIDRUN_CGROUP_PARENT`` and the gvisor and microvm
drivers' ``<parent>-gvisor`` / ``<parent>-microvm``). Two servers sharing a uid area hand the
same host uids to different sandboxes; sharing a subnet, they fight over routes and addresses.

So at start a server writes ``<VOIDRUN_HOST_CLAIMS_DIR>/<tag>.json`` (data dir, pid, command,
uid area, subnet, cgroup names) and holds an ``flock`` on it for its whole life; the check of
every other claim and the write happen under an exclusive lock of the directory, so two
servers starting at once see each other (and the files of dead owners are deleted then). A
claim counts while its file is locked: the kernel drops the lock when its process dies, however
it dies, so the claim of a SIGKILLed server (a dead pid) never blocks; nor does a leftover file
whose pid was reused. Locks, unlike pids, also work across PID namespaces (node daemons in
containers sharing the host's ``/run/voidrun``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .config import Settings
from .errors import ConflictError, VoidRunError

__all__ = ["Claim", "claim", "conflicts", "live_claims"]

RANGE_SIZE = 65536
_LOCK = ".lock"


@dataclass(frozen=True)
class Claim:
    data_dir: str
    pid: int
    command: str
    uid_first: int
    uid_end: int  # exclusive
    subnet: str | None  # None: sandbox networking off
    cgroups: tuple[str, ...]

    @classmethod
    def of(cls, settings: Settings, command: str) -> Claim:
        parent = settings.cgroup_parent
        return cls(
            data_dir=str(settings.data_dir),
            pid=os.getpid(),
            command=command,
            uid_first=settings.sandbox_uid_base,
            uid_end=settings.sandbox_uid_base + settings.sandbox_uid_ranges * RANGE_SIZE,
            subnet=str(settings.sandbox_subnet) if settings.sandbox_network else None,
            cgroups=(parent, f"{parent}-gvisor", f"{parent}-microvm"),
        )

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "cgroups": list(self.cgroups)})

    @classmethod
    def from_json(cls, text: str) -> Claim:
        data = json.loads(text)
        return cls(
            data_dir=str(data["data_dir"]),
            pid=int(data["pid"]),
            command=str(data["command"]),
            uid_first=int(data["uid_first"]),
            uid_end=int(data["uid_end"]),
            subnet=None if data.get("subnet") is None else str(data["subnet"]),
            cgroups=tuple(str(c) for c in data["cgroups"]),
        )

    @property
    def owner(self) -> str:
        return f"pid {self.pid} ({self.command}, data dir {self.data_dir})"


def conflicts(mine: Claim, other: Claim) -> list[str]:
    """What ``mine`` shares with ``other``, one line each naming both settings."""
    found = []
    if mine.uid_first < other.uid_end and other.uid_first < mine.uid_end:
        found.append(
            f"host uid area {mine.uid_first}..{mine.uid_end - 1} overlaps "
            f"{other.uid_first}..{other.uid_end - 1} "
            "(VOIDRUN_SANDBOX_UID_BASE / VOIDRUN_SANDBOX_UID_RANGES)"
        )
    if mine.subnet and other.subnet:
        a, b = ipaddress.IPv4Network(mine.subnet), ipaddress.IPv4Network(other.subnet)
        if a.overlaps(b):
            found.append(f"sandbox subnet {a} overlaps {b} (VOIDRUN_SANDBOX_SUBNET)")
    shared = sorted(set(mine.cgroups) & set(other.cgroups))
    if shared:
        found.append(f"cgroup names {', '.join(shared)} are shared (VOIDRUN_CGROUP_PARENT)")
    return found


def _tag(data_dir: str) -> str:
    return hashlib.sha256(data_dir.encode()).hexdigest()[:16]


def _held(path: Path) -> bool:
    """True when a live process holds the claim's lock (it is then not stale)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def live_claims(directory: Path, *, skip: str = "", prune: bool = False) -> list[Claim]:
    """Every claim in ``directory`` whose owner is alive (its file locked), but ``skip``'s;
    ``prune`` (only under the directory's lock) deletes the files of dead owners."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for path in sorted(directory.glob("*.json")):
            if path.stem == skip:
                continue
            if not _held(path):
                if prune:
                    path.unlink(missing_ok=True)
                continue
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                found.append(Claim.from_json(path.read_text()))
    return found


def claim(settings: Settings, command: str) -> int:
    """Check this server's uid area, subnet and cgroup names against every live claim on the
    host and record its own; returns the descriptor that holds the claim (closing it, or the
    process ending, releases it). Raises ConflictError naming the settings and the owner."""
    directory = settings.host_claims_dir
    mine = Claim.of(settings, command)
    tag = _tag(mine.data_dir)
    try:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        dir_lock = os.open(directory / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise VoidRunError(
            f"cannot use the host claims directory {directory}",
            f"{exc.strerror}; set VOIDRUN_HOST_CLAIMS_DIR to a directory this user may write, "
            "the same for every server on this host",
        ) from exc
    try:
        fcntl.flock(dir_lock, fcntl.LOCK_EX)
        for other in live_claims(directory, skip=tag, prune=True):
            found = conflicts(mine, other)
            if found:
                raise ConflictError(
                    f"another server on this host already uses what {mine.data_dir} asks for",
                    f"{'; '.join(found)}; owner: {other.owner}. Give each server on a host "
                    "its own settings (docs/scale-out.md, several nodes on one host)",
                )
        path = directory / f"{tag}.json"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:  # the data dir's lock (serverlock) is held already: nobody else holds this
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise ConflictError(
                    f"the host claim of {mine.data_dir} is held by another process", str(path)
                ) from exc
            os.ftruncate(fd, 0)
            os.pwrite(fd, mine.to_json().encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return fd
    finally:
        os.close(dir_lock)
