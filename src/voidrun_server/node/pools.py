"""The warm pools of a node daemon (``services/pool.py``, sized by ``VOIDRUN_WARM_POOL_SIZE`` /
``VOIDRUN_WARM_POOL_SIZES`` as in the all-in-one server).

A create through an API replica takes a warm sandbox in two steps, because the replica needs
the sandbox's id for the row it records in the same transaction: ``take`` (inside the
transaction: the warm sandbox's id, or none) and then ``hand_out`` (beside it: hostname,
limits, environment and egress policy of the caller's spec). A taken sandbox the replica then
throws away is destroyed like any other (``DELETE``). Pooled sandboxes have no row: a node
destroys them when it stops, and its start-up orphan sweep destroys any a crash left.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import anyio.abc

from ..api import runtimes
from ..config import Settings
from ..drivers.base import SandboxSpec, SandboxStateError
from ..drivers.driverset import DriverSet
from ..services import networking
from ..services.agents import AgentPool
from ..services.background import guarded
from ..services.pool import Warm, WarmPool
from ..services.storage import DiskFloor

log = logging.getLogger(__name__)
DefaultRootfs = Callable[[], Awaitable[Path | None]]


class NodePools:
    def __init__(self, settings: Settings, drivers: DriverSet, agents: AgentPool) -> None:
        self.settings = settings
        self.drivers = drivers
        self.agents = agents
        self.pools: dict[str, WarmPool] = {}
        self.taken: dict[str, tuple[WarmPool, Warm]] = {}
        self.handed_out = 0

    def start(self, group: anyio.abc.TaskGroup, default_rootfs: DefaultRootfs) -> None:
        floor = DiskFloor(
            self.settings.data_dir,
            self.settings.min_free_disk_mb,
            self.drivers.unwritten_disk_bytes,
        )
        for name in self.drivers.drivers:
            pool = runtimes.warm_pool(self.settings, self.drivers, name, self.agents, floor)
            if pool is not None:
                self.pools[name] = pool
                group.start_soon(guarded, f"{name} warm pool", pool.run_forever, default_rootfs)

    @contextmanager
    def serving(self, isolation: str | None) -> Iterator[None]:
        """A caller's create in flight: that pool's refill waits."""
        pool = self.pools.get(isolation or self.drivers.default)
        with pool.serving() if pool is not None else nullcontext():
            yield

    def take(self, isolation: str, rootfs: Path, disk_mb: int) -> str | None:
        pool = self.pools.get(isolation or self.drivers.default)
        warm = pool.take(rootfs, disk_mb) if pool is not None else None
        if pool is None or warm is None:
            return None
        self.taken[warm.sandbox_id] = (pool, warm)
        return warm.sandbox_id

    async def hand_out(self, spec: SandboxSpec) -> None:
        found = self.taken.pop(spec.sandbox_id, None)
        if found is None:
            raise SandboxStateError("no warm sandbox of that id was taken", spec.sandbox_id)
        pool, warm = found
        await pool.hand_out_for(warm, spec, networking.default_policy(self.settings))
        self.handed_out += 1

    def forget(self, sandbox_id: str) -> None:
        self.taken.pop(sandbox_id, None)
        self.agents.forget(sandbox_id)

    def status(self) -> dict[str, Any]:
        ready = {name: pool.ready_count for name, pool in self.pools.items()}
        return {"ready": ready, "handedOut": self.handed_out}

    async def drain(self) -> None:
        """At stop: the waiting sandboxes (and taken ones never handed out) go."""
        for pool in self.pools.values():
            await pool.drain()
        for sandbox_id in list(self.taken):
            self.forget(sandbox_id)
            try:
                await self.drivers.destroy(sandbox_id)
            except Exception as exc:  # stopping: log and go on
                log.error("could not destroy taken warm sandbox %s: %s", sandbox_id, exc)
