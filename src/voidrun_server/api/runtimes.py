"""The sandbox runtimes a server starts with: its drivers (one per offered isolation) and the
warm pool of each isolation that has one. Called from the app's lifespan."""

from __future__ import annotations

import logging

import anyio
import anyio.to_thread

from ..agent_launch import install_agent
from ..agent_runtime import install_runtime
from ..config import Settings
from ..drivers.base import Driver, DriverUnavailableError, Retargetable
from ..drivers.driverset import DriverSet
from ..drivers.netshare import NetworkShare
from ..drivers.registry import build_driver
from ..services.agents import AgentPool
from ..services.pool import WarmPool
from ..services.storage import DiskFloor

log = logging.getLogger(__name__)

__all__ = ["load_drivers", "warm_pools"]


async def load_drivers(settings: Settings) -> tuple[DriverSet | None, str | None]:
    """Every isolation in ``settings.isolations`` that can run here, or (None, why) when the
    default one cannot (sandboxes are then unavailable)."""
    # A compiled, world-readable copy of the agent under the data dir is what sandboxes mount,
    # with the interpreter that runs it (never the sandbox's own python3).
    agent_dir = await anyio.to_thread.run_sync(install_agent, settings.data_dir / "agent")
    runtime = await anyio.to_thread.run_sync(install_runtime, settings.runtime_root)
    loaded: dict[str, Driver] = {}
    missing: dict[str, DriverUnavailableError] = {}
    network = NetworkShare(settings)  # one subnet, table and resolver for every driver
    for name in settings.isolations:
        try:
            loaded[name] = build_driver(
                name, settings, agent_dir=agent_dir, runtime=runtime, network=network
            )
        except DriverUnavailableError as exc:
            missing[name] = exc
            level = logging.ERROR if name == settings.driver else logging.WARNING
            log.log(level, "isolation %s is unavailable: %s (%s)", name, exc.message, exc.hint)
    if settings.driver not in loaded:
        why = missing[settings.driver]
        return None, f"{why.message} ({why.hint})" if why.hint else why.message
    return DriverSet(loaded, default=settings.driver, unavailable=missing), None


def single(driver: Driver) -> DriverSet:
    """A set of one driver (tests hand the app their own)."""
    return DriverSet({driver.name: driver}, default=driver.name)


def warm_pools(
    settings: Settings, drivers: DriverSet, agents: AgentPool, disk_floor: DiskFloor
) -> dict[str, WarmPool]:
    """A warm pool per isolation that has a size (``warm_pool_size_for``) and a driver that
    can hand a running sandbox out (``Retargetable``)."""
    pools: dict[str, WarmPool] = {}
    for name, driver in drivers.drivers.items():
        size = settings.warm_pool_size_for(name)
        if size and isinstance(driver, Retargetable):
            pools[name] = WarmPool(
                drivers,
                agents,
                isolation=name,
                size=size,
                cpu=1,
                mem_mb=1024,
                disk_mb=settings.sandbox_disk_mb,
                ready_timeout=settings.sandbox_ready_timeout_seconds,
                min_free_memory_mb=settings.warm_pool_min_free_memory_mb,
                disk_floor=disk_floor,
            )
    return pools
