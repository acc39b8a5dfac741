"""One host uid range per sandbox: allocation, recorded on disk, never shared while in use.

Why: the kernel keeps several limits per *user* (``ucounts``): inotify instances and watches
(``fs.inotify.max_user_instances`` / ``max_user_watches``), POSIX message queue bytes
(``RLIMIT_MSGQUEUE``, ``fs.mqueue.*``), pipe buffer pages (``fs.pipe-user-pages-soft``/``-hard``),
locked memory, user namespaces and more. Sandboxes sharing one host uid range share those
counters, so one sandbox could exhaust them for all. With its own range, the sandbox's root
(``S`` on the host) owns its user namespace and all of these count per sandbox. It also means a
host user whose ``/etc/subuid`` range happens to match cannot own sandbox files: ranges listed
in ``/etc/subuid``/``/etc/subgid`` are never handed out.

Layout: ``max_ranges`` slots of 65,536 ids from ``first`` (``VOIDRUN_SANDBOX_UID_BASE``). The
default, 0x70000000 (1,879,048,192) with 4,094 slots up to 0x7FFDFFFF, is the block systemd
documents as unused (``UIDS-GIDS.md``): above the container ranges ``systemd-nspawn`` picks from
(0x00080000..0x6FFFFFFF), below its "foreign" range (0x7FFE0000..) and below 2^31, where
signed-uid bugs live. The image uid range (100000..165535, where images are shifted to and
where sandboxes created before per-sandbox ranges still run) is always excluded.

A slot is taken by creating ``<state_dir>/.uid-ranges/<base>`` as a symlink to the sandbox id
(``symlink`` fails if it exists: atomic), under an ``flock`` so concurrent creates in one
process (worker threads) or several processes see each other. It is released when the sandbox
is destroyed. A marker whose sandbox directory no longer exists (a crash mid-create) is
reclaimed when no free slot is left. The sandbox's record (``state.json``) also carries its
``uid_base``, which is what every later operation uses.

The markers are listed once and then kept in memory, updated by this object's own allocations
and releases; the directory is listed again only when its mtime says someone else changed it
(listing 1,000 markers cost a create 1.3 ms). The symlink stays the claim: a slot the view
thought free but another process took fails with ``EEXIST`` and the next one is tried.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from voidrun_server.drivers.base import DriverError

__all__ = [
    "DEFAULT_FIRST_BASE",
    "DEFAULT_MAX_RANGES",
    "IMAGE_UID_BASE",
    "RANGE_SIZE",
    "UidRanges",
    "parse_subid",
]

RANGE_SIZE = 65536
DEFAULT_FIRST_BASE = 0x70000000
DEFAULT_MAX_RANGES = (0x7FFE0000 - DEFAULT_FIRST_BASE) // RANGE_SIZE  # 4094
IMAGE_UID_BASE = 100000
"""Where images are uid-shifted to (``images/shift.py``), and the range every sandbox used
before per-sandbox ranges; never allocated."""
_MAX_ID = 2**32 - 2  # (uid_t)-1 is "no uid"


def parse_subid(path: Path) -> list[tuple[int, int]]:
    """``(start, count)`` of every range in an ``/etc/subuid``-style file (name or numeric id
    in the first field; comments, blanks and malformed lines skipped). Missing file: none."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    ranges = []
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) != 3 or line.lstrip().startswith("#"):
            continue
        try:
            start, count = int(parts[1]), int(parts[2])
        except ValueError:
            continue
        if start >= 0 and count > 0:
            ranges.append((start, count))
    return ranges


def _overlaps(base: int, taken: Iterable[tuple[int, int]]) -> bool:
    return any(start < base + RANGE_SIZE and base < start + count for start, count in taken)


class UidRanges:
    """Hands out 65,536-id host ranges to sandboxes (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        *,
        first: int = DEFAULT_FIRST_BASE,
        max_ranges: int = DEFAULT_MAX_RANGES,
        subid_files: Iterable[Path] = (Path("/etc/subuid"), Path("/etc/subgid")),
    ) -> None:
        if first <= 0 or max_ranges <= 0 or first + max_ranges * RANGE_SIZE - 1 > _MAX_ID:
            raise ValueError(f"invalid uid area: {max_ranges} ranges of {RANGE_SIZE} from {first}")
        self.directory = directory
        self.first = first
        self.max_ranges = max_ranges
        self.subid_files = tuple(subid_files)
        self._view: set[int] = set()  # the markers, as of the directory's mtime below
        self._view_mtime: int | None = None

    def bases(self) -> range:
        return range(self.first, self.first + self.max_ranges * RANGE_SIZE, RANGE_SIZE)

    def reserved(self) -> list[tuple[int, int]]:
        """Ranges never handed out: /etc/subuid and /etc/subgid (read now), the image range."""
        found = [(IMAGE_UID_BASE, RANGE_SIZE)]
        for path in self.subid_files:
            found += parse_subid(path)
        return found

    def allocate(self, sandbox_id: str, *, avoid: Iterable[tuple[int, int]] = ()) -> int:
        """A free base for ``sandbox_id`` (also avoiding the ``avoid`` ranges); raises
        DriverError when every slot is taken."""
        blocked = [*self.reserved(), *avoid]
        with self._locked():
            for reclaim in (False, True):
                if reclaim and not self._reclaim_stale():
                    break
                taken = self._taken()
                slots = self.bases()
                # markers off this grid (left by another VOIDRUN_SANDBOX_UID_BASE) still block
                odd = [(base, RANGE_SIZE) for base in taken if base not in slots]
                for base in slots:
                    if base in taken or _overlaps(base, blocked) or _overlaps(base, odd):
                        continue
                    try:
                        os.symlink(sandbox_id, self.directory / str(base))
                    except FileExistsError:  # another process changed the directory
                        taken.add(base)
                        self._view_mtime = None  # so list it again next time
                        continue
                    self._changed(base, taken=True)
                    return base
        raise DriverError(
            "no free host uid range for a new sandbox",
            f"all {self.max_ranges} ranges of {RANGE_SIZE} ids from {self.first} are in use or "
            "listed in /etc/subuid or /etc/subgid; destroy sandboxes or raise "
            "VOIDRUN_SANDBOX_UID_RANGES",
        )

    def release(self, sandbox_id: str, base: int | None = None) -> None:
        """Free the range of ``sandbox_id`` (its ``base`` if known, else found by scanning)."""
        with self._locked():
            self._taken()  # current before our change
            candidates = [base] if base is not None else list(self._markers())
            for candidate in candidates:
                marker = self.directory / str(candidate)
                with contextlib.suppress(OSError):
                    if os.readlink(marker) == sandbox_id:
                        os.unlink(marker)
                        self._changed(candidate, taken=False)

    def _taken(self) -> set[int]:
        """The markers (under the lock): the kept view unless the directory changed since."""
        mtime = os.stat(self.directory).st_mtime_ns
        if mtime != self._view_mtime:
            self._view = set(self._markers())
            self._view_mtime = mtime
        return self._view

    def _changed(self, base: int, *, taken: bool) -> None:
        """Our own change to the directory, made under the lock after ``_taken``: the view
        follows it, and stays current unless it was found stale meanwhile."""
        if taken:
            self._view.add(base)
        else:
            self._view.discard(base)
        if self._view_mtime is not None:
            self._view_mtime = os.stat(self.directory).st_mtime_ns

    def owner(self, base: int) -> str | None:
        """The sandbox id holding ``base``, if any."""
        try:
            return os.readlink(self.directory / str(base))
        except OSError:
            return None

    def _markers(self) -> Iterator[int]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return
        for name in names:
            if name.isdigit():
                yield int(name)

    def _reclaim_stale(self) -> bool:
        """Drop markers whose sandbox directory is gone; True if any was dropped."""
        dropped = False
        state_dir = self.directory.parent
        for base in list(self._markers()):
            owner = self.owner(base)
            if owner is None or "/" in owner or owner.startswith("."):
                continue
            if not (state_dir / owner).exists():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.directory / str(base))
                    dropped = True
        return dropped

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by close(); threads each open their own
            yield
        finally:
            os.close(fd)
