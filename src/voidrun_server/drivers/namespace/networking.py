"""The async half of sandbox networking: which domains the resolvers must watch and forward.

Two resolvers (dnsmasq) on the gateway: port 53 forwards any name, for sandboxes with the
internet on and no allowOut; the other forwards only the names under allowOut domains, for
sandboxes with allowOut (nftables redirects their lookups to it). Both fill the domain sets.

Domain sets are shared by every sandbox (``d_<hash>`` per domain), so they are counted here:
a set is created before the first rule that names it and deleted once no policy does, after
the resolver stopped filling it. The blocking work is ``network.HostNetwork``'s.

One per server: every driver that wires sandboxes (namespace, gvisor) shares it, so there is
one nftables table, one gateway bridge, one address book and one pair of resolvers, named
after ``state_dir`` (the namespace driver's; ``drivers/netshare.py`` makes the shared one).
``sources`` are the state directories of every driver whose sandboxes it wires: a restart
rebuilds the table from all their records at once. Each driver calls :meth:`serve` from its
``serve_network`` and :meth:`leave` when that ends; the resolvers run once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.to_thread

from voidrun_server.drivers.base import NetworkPolicy
from voidrun_server.drivers.namespace.network import HostNetwork, NetworkConfig
from voidrun_server.drivers.namespace.nftables import (
    ALLOWED_DNS_PORT,
    allowed_domains,
    domains_of,
)
from voidrun_server.drivers.namespace.resolver import RESOLVERS, Resolver, resolver_dir
from voidrun_server.drivers.namespace.state import records_in

__all__ = ["Networking"]

log = logging.getLogger(__name__)


class Networking:
    def __init__(self, state_dir: Path, config: NetworkConfig, sources: Sequence[Path]) -> None:
        self.sources = tuple(sources)
        wired = [(run, r) for src in self.sources for run, r in records_in(src) if r.net_address]
        records = [r for _, r in wired]
        self.host = HostNetwork(state_dir, config, wired)
        work_dir = resolver_dir(state_dir)
        gateway, table = str(self.host.gateway), self.host.table
        self.resolver = Resolver(work_dir, gateway, config.upstreams, table)
        # for sandboxes with allowOut: forwards the names under their allowOut domains only
        self.allowed_resolver = Resolver(
            work_dir,
            gateway,
            config.upstreams,
            table,
            port=ALLOWED_DNS_PORT,
            only=(),
            name=RESOLVERS[1],
        )
        self._domains = {r.sandbox_id: domains_of(self.host.policy_of(r)) for r in records}
        self._allowed = {r.sandbox_id: allowed_domains(self.host.policy_of(r)) for r in records}
        for resolver in (self.resolver, self.allowed_resolver):
            resolver.domains = frozenset(self._all())
        self.allowed_resolver.only = frozenset(self._all_allowed())
        self._lock = anyio.Lock()
        self._serving = 0

    def _all(self) -> set[str]:
        return set().union(*self._domains.values()) if self._domains else set()

    def _all_allowed(self) -> set[str]:
        return set().union(*self._allowed.values()) if self._allowed else set()

    def policy(self, policy: NetworkPolicy | None) -> NetworkPolicy:
        return policy if policy is not None else self.host.config.default_policy

    def _request_resolvers(self) -> None:
        self.resolver.request(self._all())
        self.allowed_resolver.request(self._all(), self._all_allowed())

    async def resolvers_ready(self) -> None:
        """Until both resolvers serve every domain requested so far (they restart at once)."""
        await self.resolver.ready()
        await self.allowed_resolver.ready()

    async def _update_resolvers(self) -> None:
        self._request_resolvers()
        await self.resolvers_ready()

    async def want(self, sandbox_id: str, policy: NetworkPolicy, *, wait: bool = True) -> bool:
        """Make sure the sets (and the resolvers) for this policy's domains exist; with
        ``wait`` False the resolvers restart in the background: :meth:`resolvers_ready`
        before the sandbox may look a name up (a create overlaps it with the sandbox's
        start). Returns whether they restart."""
        restart = False
        async with self._lock:
            before, before_allowed = self._all(), self._all_allowed()
            self._domains.setdefault(sandbox_id, set()).update(domains_of(policy))
            self._allowed.setdefault(sandbox_id, set()).update(allowed_domains(policy))
            added = self._all() - before
            if added:
                await anyio.to_thread.run_sync(self.host.ensure_sets, sorted(added), ())
            if added or self._all_allowed() != before_allowed:
                self._request_resolvers()
                restart = True
        if wait and restart:
            await self.resolvers_ready()
        return restart

    async def settle(self, sandbox_id: str, policy: NetworkPolicy | None) -> None:
        """The sandbox now uses ``policy`` (None: it is gone): drop sets nobody names."""
        async with self._lock:
            before, before_allowed = self._all(), self._all_allowed()
            if policy is None:
                self._domains.pop(sandbox_id, None)
                self._allowed.pop(sandbox_id, None)
            else:
                self._domains[sandbox_id] = domains_of(policy)
                self._allowed[sandbox_id] = allowed_domains(policy)
            unused = before - self._all()
            if unused or self._all_allowed() != before_allowed:
                await self._update_resolvers()
            if unused:
                await anyio.to_thread.run_sync(self.host.ensure_sets, (), sorted(unused))

    async def serve(self) -> None:
        """Run the resolvers until cancelled; of the drivers sharing this network, the first
        caller runs them and the others wait (all are cancelled together, at shutdown)."""
        self._serving += 1
        if self._serving > 1:
            await anyio.sleep_forever()
        async with anyio.create_task_group() as group:
            group.start_soon(self.resolver.serve)
            group.start_soon(self.allowed_resolver.serve)

    def any_wired(self) -> bool:
        """Whether any sandbox of any source still has an address (blocking: reads records)."""
        return any(r.net_address for src in self.sources for _, r in records_in(src))

    async def leave(self) -> None:
        """A driver's :meth:`serve` ended and its creates are settled. The last to leave
        removes the table and the gateway bridge when no sandbox is left to serve."""
        self._serving -= 1
        if self._serving <= 0 and not await anyio.to_thread.run_sync(self.any_wired):
            await anyio.to_thread.run_sync(self.host.remove_all)
            log.info("sandbox network: no sandbox left, removed its rules and links")

    def sandboxes(self) -> list[str]:
        return list(self._domains)
