"""Network namespaces owned by the host, and the veth pair that wires one to the host.

A sandbox's network namespace is made by the server (``unshare(CLONE_NEWNET)`` in a worker
thread), not by bubblewrap: it is owned by the host's user namespace, so root inside the
sandbox (root of a *child* user namespace) holds no CAP_NET_ADMIN over it and cannot change
its addresses, routes, sysctls or firewall. It is kept alive by a bind mount at
``<run dir>/netns`` (a server restart finds it there) and bwrap is spawned from a thread that
stepped into it (:func:`entered`), which costs two ``setns`` calls instead of an ``nsenter``.

Inside: ``lo`` up, ``eth0`` with the sandbox's address and a default route to the gateway,
IPv6 off (no unfiltered path), ``ip_unprivileged_port_start=0`` (root inside binds port 80
although its capabilities are not valid in this namespace) and ICMP echo sockets for all.
Outside: the host end ``vr<12 hex>`` with a /32 route to the sandbox and IPv6 off.

Every function blocks (netlink, mount): call from a worker thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from voidrun_server.drivers.namespace import rtnl

__all__ = ["Wiring", "create", "entered", "host_link_name", "remove", "shape", "unwire", "wire"]

CLONE_NEWNET = 0x40000000
CLONE_NEWUTS = 0x04000000
MS_BIND = 0x1000
MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)
INSIDE_ETH0 = 2  # a fresh namespace holds lo (1) and then the peer created into it
INSIDE_SYSCTLS = {
    "ipv4/ip_unprivileged_port_start": "0",
    "ipv4/ping_group_range": "0 2147483647",
    "ipv6/conf/all/disable_ipv6": "1",
    "ipv6/conf/default/disable_ipv6": "1",
}


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def host_link_name(sandbox_id: str) -> str:
    """``vr`` + the id's last 12 hex digits: its random part (the first 8 are a timestamp,
    so two sandboxes created in one second would share a prefix)."""
    return f"vr{sandbox_id[-12:]}"


_KINDS = {"net": CLONE_NEWNET, "uts": CLONE_NEWUTS}


@contextlib.contextmanager
def entered(path: Path, kind: str = "net") -> Iterator[None]:
    """Run the block with this thread in the network (or UTS) namespace at ``path`` (children
    spawned here are born in it); the thread's own namespace is restored afterwards."""
    flag = _KINDS[kind]
    home = os.open(f"/proc/thread-self/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(_libc.setns(target, flag), "setns")
        finally:
            os.close(target)
        try:
            yield
        finally:
            _check(_libc.setns(home, flag), "setns back")
    finally:
        os.close(home)


def create(path: Path) -> rtnl.Rtnl:
    """A new network namespace, configured inside and pinned at ``path`` (a new file), and
    an rtnetlink socket in it (made while this thread is inside: no second ``setns``)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            os.close(fd)
            _check(
                _libc.mount(b"/proc/thread-self/ns/net", os.fsencode(path), None, MS_BIND, None),
                "bind-mount the network namespace",
            )
            for key, value in INSIDE_SYSCTLS.items():
                with open(f"/proc/sys/net/{key}", "w") as f:
                    f.write(value)
            return rtnl.Rtnl()
        finally:
            _check(_libc.setns(home, CLONE_NEWNET), "setns back")
    finally:
        os.close(home)


def remove(path: Path) -> None:
    """Unpin the namespace (the kernel frees it with its last user) and delete the file."""
    if os.path.ismount(path):
        _check(_libc.umount2(os.fsencode(path), MNT_DETACH), f"umount {path}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@dataclass(frozen=True)
class Wiring:
    """Where one sandbox sits on the sandbox subnet."""

    link: str  # host end
    address: ipaddress.IPv4Address
    gateway: ipaddress.IPv4Address
    prefixlen: int
    route_protocol: int


def _set_sysctl(key: str, value: str) -> None:
    with open(f"/proc/sys/net/{key}", "w") as f:
        f.write(value)


def _tbf(ipr: IPRoute, index: int, mbit: int) -> None:
    rate = mbit * 1_000_000 // 8  # bytes per second
    ipr.tc("add", "tbf", index, 0x10000, rate=rate, burst=max(rate // 50, 32 * 1024), latency=50)


def shape(host: IPRoute, path: Path, link: str, mbit: int) -> None:
    """A token bucket on each end of the pair (only with a bandwidth cap: pyroute2 encodes
    the qdisc; its inside socket starts an event loop, which the uncapped path avoids)."""
    with entered(path):
        inside = IPRoute()  # its socket stays in the sandbox's namespace
    try:
        _tbf(host, host.link_lookup(ifname=link)[0], mbit)  # towards the sandbox
        _tbf(inside, INSIDE_ETH0, mbit)  # from it (root inside cannot lift it)
    finally:
        inside.close()


def wire(inside: rtnl.Rtnl, path: Path, wiring: Wiring) -> None:
    """The veth pair, addresses and routes: two batches of netlink messages, one on a host
    socket and one on ``inside`` (from :func:`create`; the namespace must be fresh). Leaves
    nothing on failure (raises :class:`rtnl.NetlinkFailure`)."""
    with rtnl.Rtnl() as host:
        ns_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            host.check(rtnl.Batch().veth(wiring.link, "eth0", ns_fd, up=True))
        finally:
            os.close(ns_fd)
        try:
            _set_sysctl(f"ipv6/conf/{wiring.link}/disable_ipv6", "1")
            index = socket.if_nametoindex(wiring.link)
            host_route = rtnl.Batch().route(
                ipaddress.IPv4Network(wiring.address), index, protocol=wiring.route_protocol
            )
            default = ipaddress.IPv4Network("0.0.0.0/0")
            inside_batch = (
                rtnl.Batch()
                .link_up(1)
                .address(INSIDE_ETH0, wiring.address, wiring.prefixlen)
                .link_up(INSIDE_ETH0)
                .route(default, INSIDE_ETH0, gateway=wiring.gateway)
            )
            failures = host.run(host_route) + inside.run(inside_batch)
            if failures:
                raise failures[0]
        except BaseException:
            unwire(host, wiring.link)
            raise


def unwire(host: rtnl.Rtnl, link: str) -> None:
    """Delete the host end (the kernel deletes its peer and the route with it)."""
    for failure in host.run(rtnl.Batch().delete_link(link)):
        if not rtnl.is_missing(failure):
            raise failure


def link_counters(link: str) -> tuple[int, int] | None:
    """(bytes into the sandbox, bytes out of it) from the host end's counters."""
    base = f"/sys/class/net/{link}/statistics"
    try:
        with open(f"{base}/tx_bytes") as tx, open(f"{base}/rx_bytes") as rx:
            return int(tx.read()), int(rx.read())
    except (OSError, ValueError):
        return None


def routes(host: IPRoute) -> list[dict[str, Any]]:
    """Main-table IPv4 routes as ``{"dst": network, "oif": name or None, "proto": int}``."""
    names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in host.get_links()}
    found = []
    for route in host.get_routes(family=socket.AF_INET, table=254):
        dst = route.get_attr("RTA_DST") or "0.0.0.0"
        found.append(
            {
                "dst": ipaddress.ip_network(f"{dst}/{route['dst_len']}", strict=False),
                "oif": names.get(route.get_attr("RTA_OIF")),
                "proto": route["proto"],
            }
        )
    return found
