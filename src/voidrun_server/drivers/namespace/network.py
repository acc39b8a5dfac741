"""The host side of sandbox networking: the subnet, the gateway, and one sandbox's wiring.

At start (``HostNetwork(...)``) the server claims its subnet: it refuses one that overlaps a
route it does not own, puts the gateway address on an empty bridge ``vrgw<tag>`` (a bridge
without ports: hosts without the ``dummy`` module have bridges) that also holds
the subnet's route (packets to unassigned addresses end there), turns IPv4 forwarding on and
rebuilds its nftables table from the sandboxes' records, so a restart re-adopts every
sandbox's rules exactly. Links and namespaces of running sandboxes survive a restart untouched.

Per sandbox: :meth:`attach` (namespace, veth pair, rules) before bwrap starts, :meth:`detach`
at stop and destroy (rules, link, namespace), :meth:`apply_policy` for live changes.
Blocking: worker threads only.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from voidrun_server.drivers.base import DriverError, DriverUnavailableError, NetworkPolicy
from voidrun_server.drivers.namespace import netns, nftables, rtnl
from voidrun_server.drivers.namespace.state import RunDir, SandboxRecord

__all__ = ["Attaching", "HostNetwork", "NetworkConfig", "host_names"]

log = logging.getLogger(__name__)
T = TypeVar("T")
ROUTE_PROTOCOL = 0xD5  # marks our routes (rtnetlink protocol numbers >= 0xC0 are free)
SANDBOX_LINK = re.compile(r"^vr[0-9a-f]{12}$")


@dataclass(frozen=True)
class NetworkConfig:
    subnet: ipaddress.IPv4Network
    upstreams: tuple[str, ...]
    """The resolver's upstream servers (``ip`` or ``ip#port``)."""
    default_policy: NetworkPolicy = field(default_factory=NetworkPolicy)
    allowed_private: tuple[ipaddress.IPv4Network, ...] = ()
    bandwidth_mbit: int = 0
    domain_timeout: int = nftables.DOMAIN_TIMEOUT
    """Seconds an address stays in a domain's set after it was resolved or last used."""


def host_names(state_dir: Path) -> tuple[str, str]:
    """(nftables table, gateway bridge) of the server whose (resolved) state dir this is."""
    tag = hashlib.sha256(str(state_dir).encode()).hexdigest()[:6]
    return f"voidrun_{tag}", f"vrgw{tag}"


def _ignore_exists(exc: NetlinkError) -> None:
    if exc.code != errno.EEXIST:
        raise exc


class HostNetwork:
    def __init__(
        self,
        state_dir: Path,
        config: NetworkConfig,
        records: Iterable[tuple[RunDir, SandboxRecord]],
    ):
        """``state_dir`` names the table, the bridge (:func:`host_names`); ``records``: every
        sandbox of every driver wired through this network, with its run directory."""
        if config.subnet.prefixlen > 28:
            raise DriverUnavailableError(
                f"sandbox subnet {config.subnet} is too small", hint="use a /16 .. /28"
            )
        self.config = config
        self.state_dir = state_dir
        self.table, self.dummy = host_names(state_dir)
        self.gateway = config.subnet.network_address + 1
        self._lock = threading.Lock()  # the address book
        # pyroute2 keeps an event loop and transport per calling thread: one thread does all
        # host netlink work, so there is one of each (and close() releases them).
        self._netlink_thread = ThreadPoolExecutor(1, thread_name_prefix="voidrun-netlink")
        self._ipr: IPRoute = self._netlink(IPRoute)
        # Namespaces, links and rules of sandboxes being created, while their disks are
        # prepared and their processes start.
        self._wiring = ThreadPoolExecutor(4, thread_name_prefix="voidrun-wiring")
        self._closed = False
        self.nft = nftables.Nft()
        records = [(run, r) for run, r in records if r.net_address]
        self._used = {ipaddress.IPv4Address(r.net_address) for _, r in records if r.net_address}
        self._check_overlap({netns.host_link_name(r.sandbox_id) for _, r in records})
        self._claim_subnet()
        self.rebuild(records)

    def _netlink(self, fn: Callable[..., T], *args: Any) -> T:
        return self._netlink_thread.submit(fn, *args).result()

    # -- the subnet ---------------------------------------------------------------------------

    def _check_overlap(self, ours: set[str]) -> None:
        subnet = self.config.subnet
        for route in self._netlink(netns.routes, self._ipr):
            dst = route["dst"]
            if dst.prefixlen == 0 or not dst.overlaps(subnet):
                continue
            if route["oif"] == self.dummy or route["oif"] in ours:
                continue
            if route["proto"] == ROUTE_PROTOCOL and SANDBOX_LINK.match(route["oif"] or ""):
                continue  # a sandbox link (ours from a crash mid-create: reconcile removes it)
            raise DriverUnavailableError(
                f"sandbox subnet {subnet} overlaps the host route {dst} (dev {route['oif']})",
                hint="choose a free range in VOIDRUN_SANDBOX_SUBNET (see `ip route`)",
            )

    def _claim_subnet(self) -> None:
        self._netlink(self._claim_links)
        with open("/proc/sys/net/ipv4/ip_forward", "r+") as f:
            if f.read().strip() != "1":
                log.info("turning on IPv4 forwarding (net.ipv4.ip_forward=1) for sandboxes")
                f.seek(0)
                f.write("1")

    def _claim_links(self) -> None:
        try:
            self._ipr.link("add", ifname=self.dummy, kind="bridge", state="up")
        except NetlinkError as exc:
            _ignore_exists(exc)
        index = self._ipr.link_lookup(ifname=self.dummy)[0]
        self._ipr.link("set", index=index, state="up")
        try:
            self._ipr.addr("add", index=index, address=str(self.gateway), prefixlen=32)
        except NetlinkError as exc:
            _ignore_exists(exc)
        subnet = self.config.subnet
        try:
            self._ipr.route(
                "add",
                dst=str(subnet.network_address),
                dst_len=subnet.prefixlen,
                oif=index,
                proto=ROUTE_PROTOCOL,
            )
        except NetlinkError as exc:
            _ignore_exists(exc)

    def rebuild(self, records: Iterable[tuple[RunDir, SandboxRecord]]) -> None:
        """The whole table from the records (running and paused sandboxes get their chains)."""
        script = nftables.table_script(
            self.table, self.config.subnet, self.gateway, self.config.allowed_private
        )
        domains: set[str] = set()
        chains = []
        for run, record in records:
            policy = self.policy_of(record)
            domains |= nftables.domains_of(policy)
            if record.net_address and os.path.ismount(run.netns):  # wired now
                link = netns.host_link_name(record.sandbox_id)
                address = ipaddress.IPv4Address(record.net_address)
                chains.append(
                    nftables.sandbox_rules(
                        self.table, record.sandbox_id, link, address, policy, new=True
                    )
                )
        script += nftables.domain_sets(self.table, sorted(domains), (), self.config.domain_timeout)
        self.nft.run(script + "".join(chains))

    def close(self) -> None:
        """Release the netlink socket (tests; a server keeps it for its lifetime). Once."""
        if self._closed:
            return
        self._closed = True
        self._netlink(self._ipr.close)
        self._netlink_thread.shutdown()
        self._wiring.shutdown()

    def remove_all(self) -> None:
        """Table and gateway link (when the server stops with no sandbox left)."""
        self.nft.run(nftables.delete_table(self.table))
        with rtnl.Rtnl() as host:
            netns.unwire(host, self.dummy)

    # -- one sandbox --------------------------------------------------------------------------

    def policy_of(self, record: SandboxRecord) -> NetworkPolicy:
        if record.net_policy is None:
            return self.config.default_policy
        return NetworkPolicy.from_wire(record.net_policy)

    def allocate(self) -> ipaddress.IPv4Address:
        with self._lock:
            for address in self.config.subnet.hosts():
                if address != self.gateway and address not in self._used:
                    self._used.add(address)
                    return address
        raise DriverError("no free address in the sandbox subnet", str(self.config.subnet))

    def release(self, address: str | None) -> None:
        if address:
            with self._lock:
                self._used.discard(ipaddress.IPv4Address(address))

    def attach(self, run: RunDir, record: SandboxRecord) -> None:
        """Namespace, link and rules; the sandbox's processes start afterwards, inside."""
        self.begin_attach(run, record).wait()

    def begin_attach(self, run: RunDir, record: SandboxRecord) -> Attaching:
        """Namespace, link and rules, all on a worker thread: :meth:`Attaching.namespace`
        before a process may be born in the namespace, :meth:`Attaching.wait` before the
        sandbox is reported running. Until its rules are in, nothing from the sandbox passes
        (its veth is in no map)."""
        assert record.net_address is not None
        namespace: Future[None] = Future()
        future = self._wiring.submit(self._attach, run, record, namespace)
        return Attaching(self, run, record, namespace, future)

    def _attach(self, run: RunDir, record: SandboxRecord, namespace: Future[None]) -> None:
        try:
            link = netns.host_link_name(record.sandbox_id)
            if os.path.ismount(run.netns) or os.path.exists(f"/sys/class/net/{link}"):
                self.detach(run, record.sandbox_id, record)  # leftovers of one that died
            try:
                inside = netns.create(run.netns)
            except OSError as exc:
                what = "could not create the sandbox's network namespace"
                raise DriverError(what, str(exc)) from exc
        except BaseException as exc:
            namespace.set_exception(exc)
            raise
        namespace.set_result(None)
        self._wire(inside, run, record)

    def _wire(self, inside: rtnl.Rtnl, run: RunDir, record: SandboxRecord) -> None:
        assert record.net_address is not None
        link = netns.host_link_name(record.sandbox_id)
        wiring = netns.Wiring(
            link=link,
            address=ipaddress.IPv4Address(record.net_address),
            gateway=self.gateway,
            prefixlen=self.config.subnet.prefixlen,
            route_protocol=ROUTE_PROTOCOL,
        )
        try:
            netns.wire(inside, run.netns, wiring)
        except OSError as exc:  # a refused message (rtnl.NetlinkFailure), a sysctl, a timeout
            raise DriverError("could not wire the sandbox's network", str(exc)) from exc
        finally:
            inside.close()
        if self.config.bandwidth_mbit:
            self._netlink(netns.shape, self._ipr, run.netns, link, self.config.bandwidth_mbit)
        self._rules(record, new=True)

    def apply_policy(self, record: SandboxRecord) -> None:
        self._rules(record, new=False)

    def _rules(self, record: SandboxRecord, *, new: bool) -> None:
        assert record.net_address is not None
        link = netns.host_link_name(record.sandbox_id)
        address = ipaddress.IPv4Address(record.net_address)
        policy = self.policy_of(record)
        self.nft.run(
            nftables.sandbox_rules(self.table, record.sandbox_id, link, address, policy, new=new)
        )

    def detach(self, run: RunDir, sandbox_id: str, record: SandboxRecord | None = None) -> None:
        """Rules, link and namespace of one sandbox (each only if present); its ``record``,
        when known, says which rules it has (nftables.remove_sandbox)."""
        link = netns.host_link_name(sandbox_id)
        address = policy = None
        if record is not None and record.net_address is not None:
            address, policy = ipaddress.IPv4Address(record.net_address), self.policy_of(record)
        script = nftables.remove_sandbox(self.table, sandbox_id, link, address, policy)
        self.nft.run_tolerant(script)
        with rtnl.Rtnl() as host:
            netns.unwire(host, link)
        netns.remove(run.netns)

    def ensure_sets(self, add: Iterable[str], drop: Iterable[str]) -> None:
        self.nft.run(nftables.domain_sets(self.table, add, drop, self.config.domain_timeout))

    def usage(self, sandbox_id: str) -> tuple[int, int] | None:
        return netns.link_counters(netns.host_link_name(sandbox_id))


class Attaching:
    """A sandbox's namespace, link and rules being made (:meth:`HostNetwork.begin_attach`)."""

    def __init__(
        self,
        host: HostNetwork,
        run: RunDir,
        record: SandboxRecord,
        namespace: Future[None],
        future: Future[None],
    ) -> None:
        self._host, self._run, self._record = host, run, record
        self._namespace, self._future = namespace, future
        self._undone = False

    def namespace(self) -> None:
        """The namespace is pinned at ``run.netns``; on failure, undone, then raises."""
        try:
            self._namespace.result()
        except BaseException:
            self.undo()
            raise

    def wait(self) -> None:
        """Done; on failure, everything of it (and the namespace) is undone, then raises."""
        try:
            self._future.result()
        except BaseException:
            self.undo()
            raise

    def undo(self) -> None:
        """After the wiring finished (however it ended): rules, link and namespace go (once)."""
        futures.wait([self._future])
        if not self._undone:
            self._undone = True
            self._host.detach(self._run, self._record.sandbox_id, self._record)
