"""``Networked`` for drivers that wire sandboxes through the shared sandbox network
(``networking.py``): the namespace driver and the gvisor driver. Only ``netns_path`` differs
between them; the rest is this mixin."""

from __future__ import annotations

from typing import Any, Protocol

import anyio
import anyio.to_thread

from voidrun_server.drivers.base import DriverError, NetworkPolicy, NetworkUsage
from voidrun_server.drivers.common import SandboxLocks, operation
from voidrun_server.drivers.namespace import netns
from voidrun_server.drivers.namespace.networking import Networking

__all__ = ["WiredSandboxes"]


class _Host(Protocol):
    def run_dir(self, sandbox_id: str) -> Any: ...

    def set_policy(self, run: Any, record: Any, policy: dict[str, object]) -> None: ...


class WiredSandboxes:
    """Egress policy, usage and the resolver's lifetime, for a driver with ``net`` (None:
    loopback only), a blocking ``_host``, per-sandbox ``_lock`` and ``_record``."""

    net: Networking | None
    network_enabled: bool
    _host: _Host
    _lock: SandboxLocks
    _op_timeout: float

    async def _record(self, run: Any) -> Any: ...

    def _networking(self) -> Networking:
        if self.net is None:
            raise DriverError("sandbox networking is off", "set VOIDRUN_SANDBOX_NETWORK=true")
        return self.net

    async def set_network_policy(self, sandbox_id: str, policy: NetworkPolicy) -> None:
        net = self._networking()
        run = self._host.run_dir(sandbox_id)
        async with self._lock(sandbox_id):
            with operation("network policy", self._op_timeout):
                record = await self._record(run)
                await net.want(sandbox_id, policy)
                await anyio.to_thread.run_sync(self._host.set_policy, run, record, policy.to_wire())
                await net.settle(sandbox_id, policy)

    async def network_usage(self, sandbox_id: str) -> NetworkUsage | None:
        net = self._networking()
        counters = await anyio.to_thread.run_sync(net.host.usage, sandbox_id)
        return NetworkUsage(rx_bytes=counters[0], tx_bytes=counters[1]) if counters else None

    def network_usage_snapshot(self) -> dict[str, NetworkUsage]:
        """Counters of every wired sandbox of the shared network (any driver's: links are
        named by sandbox id, so the union over drivers is the same)."""
        found: dict[str, NetworkUsage] = {}
        for sandbox_id in self.net.sandboxes() if self.net is not None else ():
            counters = netns.link_counters(netns.host_link_name(sandbox_id))
            if counters is not None:
                found[sandbox_id] = NetworkUsage(rx_bytes=counters[0], tx_bytes=counters[1])
        return found

    async def serve_network(self) -> None:
        if self.net is None:
            return
        try:
            await self.net.serve()
        finally:
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(self._op_timeout):  # creates being undone at shutdown
                    for lock in self._lock.all():
                        async with lock:
                            pass
                await self.net.leave()
