"""Host state of this test run: where its servers and drivers keep state, and cleaning it up.

Every data dir and driver state dir this run makes lives below one directory of its own
(:func:`run_state_parent`, ``<VOIDRUN_TEST_STATE_DIR or /var/tmp>/voidrun-run-<random>``), and
every state dir and sandbox subnet a server or driver of this run uses is tracked here. The
session guard (``leak_plugin.py``) looks for mounts, loop devices, processes, links, nftables
tables and cgroups of exactly these, so a concurrent run on the same host is never blamed.

Fixtures that start servers or drivers with real sandboxes call :func:`purge_state_dir` after
stopping (or killing) them and before deleting the directory: sandboxes outlive their server
on purpose, so a stop alone leaves them running.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import tempfile
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from voidrun_server.drivers.namespace.leftovers import Leftover

STATE_BASE = Path(os.environ.get("VOIDRUN_TEST_STATE_DIR", "/var/tmp"))
STATE_DIRS: dict[Path, str] = {}  # state dir -> the cgroup parent its driver uses
SUBNETS: set[ipaddress.IPv4Network] = set()


@cache
def run_state_parent() -> Path:
    """This run's directory for data and state dirs: 0711, because sandboxes run as an
    unprivileged host uid that must traverse it (not pytest's 0700 tmp dirs)."""
    path = Path(tempfile.mkdtemp(prefix="voidrun-run-", dir=STATE_BASE))
    path.chmod(0o711)
    return path


def new_state_dir(prefix: str) -> Path:
    """A fresh 0711 directory below :func:`run_state_parent` (tracked as a state dir's parent
    by the guard through its prefix)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=run_state_parent()))
    path.chmod(0o711)
    return path


def track(state_dir: Path, subnet: str | None = None, cgroup_parent: str = "voidrun") -> None:
    """A driver state dir (a server's ``<data dir>/sandboxes``) and subnet of this run."""
    STATE_DIRS[state_dir.resolve()] = cgroup_parent
    if subnet:
        track_subnet(subnet)


def track_subnet(subnet: str) -> None:
    """A sandbox subnet handed to a server or driver of this run."""
    SUBNETS.add(ipaddress.IPv4Network(subnet))


def purge_state_dir(state_dir: Path, cgroup_parent: str = "voidrun") -> None:
    """Tear down whatever the driver of ``state_dir`` left on the host (a no-op without root:
    nothing could have been left). Fails the caller if something stays."""
    if os.geteuid() != 0:
        return
    from voidrun_server.drivers.namespace.purge import purge

    result = purge(state_dir, cgroup_parent=cgroup_parent)
    assert result.clean, f"purge of {state_dir} left {result.left}: {result.errors}"


def prefixes() -> list[Path]:
    """Paths below which everything on the host is this run's."""
    found = list(STATE_DIRS)
    if run_state_parent.cache_info().currsize:  # created by this run
        found.append(run_state_parent())
    return found


def leftovers() -> list[Leftover]:
    """What this run left on the host now (``leftovers.find`` over this run's dirs)."""
    from voidrun_server.drivers.namespace.leftovers import HostView, find

    view = HostView.read(set(STATE_DIRS.values()) | {"voidrun"})
    return find(view, prefixes(), STATE_DIRS, SUBNETS)


def remove_cgroup_parents() -> None:
    """The cgroup parents of this run's test servers (``voidrun-t<hex>``, one per server,
    and their gvisor/microvm siblings), once empty: each server makes its own, so without
    this every run would leave a few hundred empty cgroups in every hierarchy."""
    names = {name for name in STATE_DIRS.values() if name.startswith("voidrun-t")}
    names |= {f"{name}-{kind}" for name in set(names) for kind in ("gvisor", "microvm")}
    base = Path("/sys/fs/cgroup")
    roots = [base, *(p for p in base.iterdir() if p.is_dir())] if base.is_dir() else []
    for root in roots:
        for name in names:
            with contextlib.suppress(OSError):  # absent, or not empty: the guard reports that
                (root / name).rmdir()


def clean_up() -> list[str]:
    """Purge every directory of this run (after a leak was reported); what could not go."""
    from voidrun_server.drivers.namespace.purge import purge

    failed: list[str] = []
    for path in prefixes():
        result = purge(path, cgroup_parent=STATE_DIRS.get(path, "voidrun"))
        failed += [str(item) for item in result.left] + result.errors
    return failed
