"""The async half of sandbox networking: which domains the resolvers must watch and forward.

Two resolvers (dnsmasq) on the gateway: port 53 forwards any name, for sandboxes with the
internet on and no allowOut; the other forwards only the names under allowOut domains, for
sandboxes with allowOut (nftables redirects their lookups to it). Both fill the domain sets.

Domain sets are shared by every sandbox (``d_<hash>`` per domain), so they are counted here:
a set is created before the first rule that names it and deleted once no policy does, after
the resolver stopped filling it. The blocking work is ``network.HostNetwork``'s.
"""

from __future__ import annotations

from collections.abc import Iterable
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
from voidrun_server.drivers.namespace.state import SandboxRecord

__all__ = ["Networking"]


class Networking:
    def __init__(
        self, state_dir: Path, config: NetworkConfig, records: Iterable[SandboxRecord]
    ) -> None:
        records = [r for r in records if r.net_address]
        self.host = HostNetwork(state_dir, config, records)
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
        async with anyio.create_task_group() as group:
            group.start_soon(self.resolver.serve)
            group.start_soon(self.allowed_resolver.serve)

    def sandboxes(self) -> list[str]:
        return list(self._domains)
