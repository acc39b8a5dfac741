"""What the namespace driver left on this host for some state directories, found from the
kernel's point of view (not from the state directory, which may be half-made or deleted).

A sandbox puts on the host: mounts under its run directory (the disk, the idmapped image, the
pinned network namespace), a loop device backed by its ``disk.img``, a cgroup named by its id,
processes (bwrap from ``<state_dir>/.bwrap``, the agent), a veth ``vr<id[-12:]>`` with a route
into the server's subnet. The server adds its bridge ``vrgw<tag>``, its nftables table
``voidrun_<tag>`` (``network.host_names``) and a dnsmasq whose command line names its
configuration under the state dir.

:meth:`HostView.read` takes one snapshot of those facts; :func:`find` (pure, tested with fake
snapshots) says which of them belong to the given directories. ``purge.py`` removes them; the
test suite's session guard (``tests/support/leak_plugin.py``) fails a run that leaves any.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from voidrun_server.drivers.namespace.netns import host_link_name
from voidrun_server.drivers.namespace.network import host_names

__all__ = ["HostView", "Leftover", "find", "parse_mountinfo", "parse_routes"]

_SANDBOX_ID = re.compile(r"^[0-9a-f]{24}$")
_SANDBOX_LINK = re.compile(r"^vr[0-9a-f]{12}$")
_ESCAPE = re.compile(r"\\([0-7]{3})")
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True, order=True)
class Leftover:
    kind: str
    """mount, loop device, process, link, nft table or cgroup."""
    name: str
    """What to act on: a path, a device, a pid, a link, table or cgroup directory."""
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.name}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class HostView:
    """One snapshot of the host facts :func:`find` looks at."""

    mounts: list[str] = field(default_factory=list)
    loops: dict[str, str] = field(default_factory=dict)  # /dev/loopN -> backing file
    links: list[str] = field(default_factory=list)
    routes: list[tuple[ipaddress.IPv4Network, str]] = field(default_factory=list)  # (dst, dev)
    tables: list[str] = field(default_factory=list)  # nftables inet tables
    processes: dict[int, list[str]] = field(default_factory=dict)  # pid -> argv
    cgroups: list[str] = field(default_factory=list)  # <hierarchy>/<parent>/<child> dirs

    @classmethod
    def read(cls, cgroup_parents: Iterable[str] = ("voidrun",)) -> HostView:
        with open("/proc/self/mountinfo") as f:
            mounts = parse_mountinfo(f.read())
        try:
            with open("/proc/net/route") as f:
                routes = parse_routes(f.read())
        except OSError:
            routes = []
        return cls(
            mounts=mounts,
            loops=_loops(),
            links=sorted(os.listdir("/sys/class/net")),
            routes=routes,
            tables=_nft_tables(),
            processes=_processes(),
            cgroups=_cgroups(cgroup_parents),
        )


def find(
    view: HostView,
    prefixes: Iterable[Path],
    state_dirs: Iterable[Path] = (),
    subnets: Iterable[ipaddress.IPv4Network] = (),
    *,
    sandbox_ids: Iterable[str] = (),
) -> list[Leftover]:
    """What in ``view`` belongs to ``prefixes`` (paths below them), the servers of
    ``state_dirs`` (their table and bridge), sandboxes whose ids appear in those paths or
    in ``sandbox_ids`` (links, cgroups) and ``subnets`` (sandbox links routed into them)."""
    roots = [str(p).rstrip("/") + "/" for p in prefixes]

    def ours(path: str) -> bool:
        return any(path.startswith(root) or path + "/" == root for root in roots)

    ids = set(sandbox_ids)
    found: list[Leftover] = []
    for mount in view.mounts:
        if ours(mount):
            found.append(Leftover("mount", mount))
            ids.update(_ids_in(mount))
    for dev, backing in view.loops.items():
        if ours(backing):
            found.append(Leftover("loop device", dev, backing))
            ids.update(_ids_in(backing))
    for pid, argv in view.processes.items():
        if pid != os.getpid() and any(ours(arg) or _names_a_root(arg, roots) for arg in argv):
            found.append(Leftover("process", str(pid), " ".join(argv)[:160]))
    names = {host_names(d) for d in state_dirs}
    tables, bridges = {t for t, _ in names}, {b for _, b in names}
    nets = list(subnets)
    routed = {dev for dst, dev in view.routes if any(dst.subnet_of(n) for n in nets)}
    links = {host_link_name(i) for i in ids} | bridges
    for link in view.links:
        if link in links or (_SANDBOX_LINK.match(link) and link in routed):
            found.append(Leftover("link", link))
    found += [Leftover("nft table", t) for t in view.tables if t in tables]
    found += [Leftover("cgroup", c) for c in view.cgroups if Path(c).name in ids]
    return found


def _names_a_root(arg: str, roots: list[str]) -> bool:
    """``--conf-file=/x/y`` style arguments."""
    _, sep, value = arg.partition("=")
    return bool(sep) and any(value.startswith(root) for root in roots)


def _ids_in(path: str) -> set[str]:
    return {part for part in path.split("/") if _SANDBOX_ID.match(part)}


def parse_mountinfo(text: str) -> list[str]:
    """Mount points (field 5, octal escapes undone) of ``/proc/<pid>/mountinfo`` text."""
    points = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 4:
            points.append(_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4]))
    return points


def parse_routes(text: str) -> list[tuple[ipaddress.IPv4Network, str]]:
    """(destination, device) of each IPv4 route in ``/proc/net/route`` text."""
    routes = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        with contextlib.suppress(ValueError):
            dst = ipaddress.IPv4Address(int(fields[1], 16).to_bytes(4, "little"))
            mask = ipaddress.IPv4Address(int(fields[7], 16).to_bytes(4, "little"))
            routes.append((ipaddress.IPv4Network(f"{dst}/{mask}", strict=False), fields[0]))
    return routes


def _loops() -> dict[str, str]:
    found = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/sys/block"):
            backing = f"/sys/block/{name}/loop/backing_file"
            if name.startswith("loop"):
                with contextlib.suppress(OSError), open(backing) as f:
                    found[f"/dev/{name}"] = f.read().strip().removesuffix(" (deleted)")
    return found


def _nft_tables() -> list[str]:
    from voidrun_server.drivers.base import DriverError, DriverUnavailableError
    from voidrun_server.drivers.namespace.nftables import Nft

    try:
        out = Nft().run("list tables inet")
    except (DriverError, DriverUnavailableError):
        return []
    return [line.split()[-1] for line in out.splitlines() if line.startswith("table inet ")]


def _processes() -> dict[int, list[str]]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
                found[int(entry)] = [a.decode(errors="replace") for a in argv if a]
    return found


def _cgroups(parents: Iterable[str]) -> list[str]:
    found = []
    hierarchies = [CGROUP_ROOT, *(p for p in CGROUP_ROOT.iterdir() if p.is_dir())]
    for hierarchy in hierarchies:
        for parent in parents:
            with contextlib.suppress(OSError):
                found += [e.path for e in os.scandir(hierarchy / parent) if e.is_dir()]
    return found
