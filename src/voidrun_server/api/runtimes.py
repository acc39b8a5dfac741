"""The sandbox runtimes a server starts with: its drivers (one per offered isolation) and the
warm pool of each isolation that has one. Called from the app's lifespan."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread

from ..agent_launch import install_agent
from ..agent_runtime import Runtime, install_runtime
from ..config import Settings
from ..drivers.base import Driver, DriverUnavailableError, Retargetable
from ..drivers.driverset import DriverSet
from ..drivers.netshare import NetworkShare
from ..drivers.registry import build_driver
from ..services.agents import AgentPool
from ..services.pool import WarmPool
from ..services.storage import DiskFloor

log = logging.getLogger(__name__)

__all__ = ["AgentAssets", "load_drivers", "single", "start_others", "warm_pool"]


@dataclass(frozen=True)
class AgentAssets:
    """What every driver puts into its sandboxes: the agent package and its interpreter."""

    agent_dir: Path
    runtime: Runtime
    network: NetworkShare
    """One subnet, nftables table and resolver for every driver that wires sandboxes."""


async def load_drivers(settings: Settings) -> tuple[DriverSet | None, str | None, AgentAssets]:
    """The default isolation's driver, now; every other one in ``settings.isolations`` is
    left ``starting`` for :func:`start_others` (their first start may fetch a guest kernel or
    probe a platform for seconds). (None, why) when the default cannot run here."""
    # A compiled, world-readable copy of the agent under the data dir is what sandboxes mount,
    # with the interpreter that runs it (never the sandbox's own python3).
    agent_dir = await anyio.to_thread.run_sync(install_agent, settings.data_dir / "agent")
    runtime = await anyio.to_thread.run_sync(install_runtime, settings.runtime_root)
    assets = AgentAssets(agent_dir, runtime, NetworkShare(settings))
    name = settings.driver
    try:
        default = build_driver(
            name, settings, agent_dir=agent_dir, runtime=runtime, network=assets.network
        )
    except DriverUnavailableError as exc:
        log.error("isolation %s is unavailable: %s (%s)", name, exc.message, exc.hint)
        return None, f"{exc.message} ({exc.hint})" if exc.hint else exc.message, assets
    drivers = DriverSet({name: default}, default=name)
    drivers.starting.update(n for n in settings.isolations if n != name)
    return drivers, None, assets


async def start_others(
    settings: Settings,
    drivers: DriverSet,
    assets: AgentAssets,
    ready: Callable[[str], Awaitable[None]],
) -> None:
    """Build every ``starting`` driver in a worker thread, one after the other; each one that
    can run here joins the set and ``ready(name)`` adopts its sandboxes; the others are
    recorded as unavailable with their reason."""
    for name in sorted(drivers.starting):
        try:
            driver = await anyio.to_thread.run_sync(
                functools.partial(
                    build_driver,
                    name,
                    settings,
                    agent_dir=assets.agent_dir,
                    runtime=assets.runtime,
                    network=assets.network,
                ),
                abandon_on_cancel=True,
            )
        except DriverUnavailableError as exc:
            log.warning("isolation %s is unavailable: %s (%s)", name, exc.message, exc.hint)
            drivers.fail(name, exc)
            continue
        except Exception as exc:  # a driver's own bug must not end the others
            log.exception("isolation %s failed to start", name)
            drivers.fail(name, DriverUnavailableError(f"{name} failed to start: {exc!r}"))
            continue
        drivers.add(name, driver)
        log.info("isolation %s is ready", name)
        await ready(name)


def single(driver: Driver) -> DriverSet:
    """A set of one driver (tests hand the app their own)."""
    return DriverSet({driver.name: driver}, default=driver.name)


def warm_pool(
    settings: Settings, drivers: DriverSet, name: str, agents: AgentPool, disk_floor: DiskFloor
) -> WarmPool | None:
    """The warm pool of isolation ``name``, if it has a size (``warm_pool_size_for``) and a
    driver that can hand a running sandbox out (``Retargetable``)."""
    size = settings.warm_pool_size_for(name)
    if not size or not isinstance(drivers.drivers.get(name), Retargetable):
        return None
    return WarmPool(
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
