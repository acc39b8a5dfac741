"""Remove everything the namespace driver of one state directory put on this host.

For an operator's uninstall or reset (``voidrun-server purge``) and for test teardown, with
the server stopped (the caller checks: ``serverlock.py``). Sandboxes outlive a server on
purpose (a restarted server re-adopts them), so stopping a server is not enough to clean up.

1. the resolver (dnsmasq) whose command line names this state dir's configuration;
2. every sandbox directory, through the driver's own ``host.teardown`` (processes, cgroups,
   mounts, loop devices, run directory, uid range) after unwiring its network here (its link
   and namespace pin: a stopped server has no ``HostNetwork`` to do it, and claiming the
   subnet again just to release it could fail on a changed configuration);
3. a sweep of what the kernel still shows for this state dir (``leftovers.find``): a torn
   create, a sandbox directory deleted while its disk was mounted, a deleted state dir;
4. the server's nftables table and gateway bridge.

What was there before and is gone after is reported as removed; what is still there is
reported as left (and makes the command fail). Blocking: call from a thread or a CLI.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from voidrun_server.drivers.base import DriverError
from voidrun_server.drivers.namespace import disk, idmount, netns, rtnl
from voidrun_server.drivers.namespace.cgroups import Cgroups, detect_cgroups
from voidrun_server.drivers.namespace.host import CLEANUP_TIMEOUT, teardown
from voidrun_server.drivers.namespace.leftovers import HostView, Leftover, find
from voidrun_server.drivers.namespace.network import host_names
from voidrun_server.drivers.namespace.resolver import RESOLVERS, conf_file, resolver_dir
from voidrun_server.drivers.namespace.state import SANDBOX_ID_RE, RunDir
from voidrun_server.drivers.namespace.uidrange import UidRanges

__all__ = ["PurgeResult", "purge"]

log = logging.getLogger(__name__)
TERM_GRACE = 2.0
OUR_PROGRAMS = ("bwrap", "dnsmasq")


@dataclass
class PurgeResult:
    sandboxes: list[str] = field(default_factory=list)
    """Sandbox directories torn down."""
    removed: list[Leftover] = field(default_factory=list)
    left: list[Leftover] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.left and not self.errors


def purge(
    state_dir: Path,
    *,
    cgroup_parent: str = "voidrun",
    progress: Callable[[str], None] = lambda _: None,
) -> PurgeResult:
    """Tear down every sandbox of ``state_dir`` and the server's network (see the module
    docstring); ``progress`` gets one line per step. Never raises for one stuck item: it
    goes on with the others and reports it in ``errors`` and ``left``."""
    state_dir = state_dir.resolve()
    result = PurgeResult()

    def look() -> list[Leftover]:
        view = HostView.read((cgroup_parent,))
        return find(view, [state_dir], [state_dir], sandbox_ids=_sandbox_ids(state_dir))

    before = look()
    cgroups = detect_cgroups(cgroup_parent)
    with _attempt(result, "resolver"):
        _end_resolver(state_dir, before, progress)
    with rtnl.Rtnl() as ipr:
        for run in _run_dirs(state_dir):
            with _attempt(result, f"sandbox {run.sandbox_id}"):
                progress(f"sandbox {run.sandbox_id}: tearing down")
                netns.unwire(ipr, netns.host_link_name(run.sandbox_id))
                netns.remove(run.netns)
                teardown(run, cgroups=cgroups, uids=_uids(state_dir), network=None)
                result.sandboxes.append(run.sandbox_id)
        for leftover in _ordered(look()):
            with _attempt(result, str(leftover)):
                progress(f"sweeping {leftover}")
                _remove(leftover, cgroups, ipr)
        table, bridge = host_names(state_dir)
        with _attempt(result, f"nft table {table}"):
            if any(item == Leftover("nft table", table) for item in before):
                progress(f"nft table {table}: deleting")
                _delete_table(table)
        netns.unwire(ipr, bridge)
    after = look()
    result.removed = sorted(set(before) - set(after))
    result.left = sorted(after)
    return result


@contextlib.contextmanager
def _attempt(result: PurgeResult, what: str) -> Iterator[None]:
    try:
        yield
    except (DriverError, OSError) as exc:
        result.errors.append(f"{what}: {exc}")
        log.warning("purge: %s: %s", what, exc)


def _run_dirs(state_dir: Path) -> list[RunDir]:
    with contextlib.suppress(FileNotFoundError):
        return [
            RunDir(Path(e.path))
            for e in sorted(os.scandir(state_dir), key=lambda e: e.name)
            if SANDBOX_ID_RE.match(e.name) and e.is_dir(follow_symlinks=False)
        ]
    return []


def _sandbox_ids(state_dir: Path) -> list[str]:
    return [run.sandbox_id for run in _run_dirs(state_dir)]


def _uids(state_dir: Path) -> UidRanges:
    """Only ``release`` is used (it needs the markers' directory, not the configured area)."""
    return UidRanges(state_dir / ".uid-ranges")


def _end_resolver(state_dir: Path, before: list[Leftover], progress: Callable[[str], None]) -> None:
    """End the dnsmasqs this state dir's server started (they outlive a killed server)."""
    wanted = {f"--conf-file={conf_file(resolver_dir(state_dir), name)}" for name in RESOLVERS}
    for item in before:
        if item.kind == "process" and wanted & set(_argv(int(item.name))):
            progress(f"resolver: ending dnsmasq {item.name}")
            _end_process(int(item.name))


def _argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _end_process(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + TERM_GRACE
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.01)
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGKILL)


def _ordered(found: list[Leftover]) -> list[Leftover]:
    """Processes (they hold mounts), links, mounts deepest first, loop devices, cgroups."""
    rank = {"process": 0, "link": 1, "mount": 2, "loop device": 3, "cgroup": 4}
    return sorted(found, key=lambda i: (rank.get(i.kind, 9), -i.name.count("/"), i.name))


def _remove(item: Leftover, cgroups: Cgroups, ipr: rtnl.Rtnl) -> None:
    deadline = time.monotonic() + CLEANUP_TIMEOUT
    if item.kind == "process":
        # The driver's bwrap and dnsmasq only: an operator's shell in the directory stays.
        argv = _argv(int(item.name))
        if argv and Path(argv[0]).name in OUR_PROGRAMS:
            _end_process(int(item.name))
    elif item.kind == "link":
        netns.unwire(ipr, item.name)
    elif item.kind == "mount":
        idmount.unmount_detach(Path(item.name))
    elif item.kind == "loop device":
        disk.detach_loop_devices(Path(item.detail), deadline)
    elif item.kind == "cgroup":
        child = Path(item.name).name
        cgroups.remove(cgroups.paths_for(child), deadline)


def _delete_table(table: str) -> None:
    from voidrun_server.drivers.namespace.nftables import Nft, delete_table

    Nft().run(delete_table(table))
