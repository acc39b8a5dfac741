"""The async half of sandbox networking: which domains the resolver must watch.

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
from voidrun_server.drivers.namespace.nftables import domains_of
from voidrun_server.drivers.namespace.resolver import Resolver, resolver_dir
from voidrun_server.drivers.namespace.state import SandboxRecord

__all__ = ["Networking"]


class Networking:
    def __init__(
        self, state_dir: Path, config: NetworkConfig, records: Iterable[SandboxRecord]
    ) -> None:
        records = [r for r in records if r.net_address]
        self.host = HostNetwork(state_dir, config, records)
        self.resolver = Resolver(
            resolver_dir(state_dir), str(self.host.gateway), config.upstreams, self.host.table
        )
        self._domains = {r.sandbox_id: domains_of(self.host.policy_of(r)) for r in records}
        self.resolver.domains = frozenset(self._all())
        self._lock = anyio.Lock()

    def _all(self) -> set[str]:
        return set().union(*self._domains.values()) if self._domains else set()

    def policy(self, policy: NetworkPolicy | None) -> NetworkPolicy:
        return policy if policy is not None else self.host.config.default_policy

    async def want(self, sandbox_id: str, policy: NetworkPolicy) -> None:
        """Make sure the sets (and the resolver) for this policy's domains exist."""
        async with self._lock:
            before = self._all()
            self._domains.setdefault(sandbox_id, set()).update(domains_of(policy))
            added = self._all() - before
            if added:
                await anyio.to_thread.run_sync(self.host.ensure_sets, sorted(added), ())
                await self.resolver.update(self._all())

    async def settle(self, sandbox_id: str, policy: NetworkPolicy | None) -> None:
        """The sandbox now uses ``policy`` (None: it is gone): drop sets nobody names."""
        async with self._lock:
            before = self._all()
            if policy is None:
                self._domains.pop(sandbox_id, None)
            else:
                self._domains[sandbox_id] = domains_of(policy)
            unused = before - self._all()
            if unused:
                await self.resolver.update(self._all())
                await anyio.to_thread.run_sync(self.host.ensure_sets, (), sorted(unused))

    async def serve(self) -> None:
        await self.resolver.serve()

    def sandboxes(self) -> list[str]:
        return list(self._domains)
