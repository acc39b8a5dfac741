"""``purge`` for the isolations other than ``namespace``: their sandboxes are destroyed by
their own drivers (the one teardown each driver has), before the namespace purge removes the
network they shared. A state directory without sandboxes costs nothing (no driver is built:
the microvm driver's first build fetches a guest kernel)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio

from ..agent_launch import install_agent
from ..agent_runtime import install_runtime
from ..config import Settings
from ..drivers.base import Driver, DriverError
from ..drivers.namespace.state import SANDBOX_ID_RE
from ..drivers.netshare import NetworkShare
from ..drivers.registry import build_driver, driver_names, state_dir_of

__all__ = ["purge_other_isolations"]


def _sandboxes(state_dir: Path) -> list[str]:
    """Sandbox directories in a driver's state directory (gvisor keeps them at its top,
    microvm under ``sandboxes/``)."""
    found = []
    for where in (state_dir, state_dir / "sandboxes"):
        if where.is_dir():
            found += [e.name for e in where.iterdir() if SANDBOX_ID_RE.match(e.name)]
    return sorted(found)


async def _destroy_all(
    driver: Driver, destroyed: list[str], errors: list[str], progress: Callable[[str], None]
) -> None:
    """Whatever the driver itself finds (its ``recover``), each destroyed its one way."""
    for sandbox_id in sorted(await driver.recover()):
        progress(f"{driver.name} sandbox {sandbox_id}: destroying")
        try:
            await driver.destroy(sandbox_id)
            destroyed.append(sandbox_id)
        except DriverError as exc:
            errors.append(f"{driver.name} sandbox {sandbox_id}: {exc}")


def purge_other_isolations(
    settings: Settings, progress: Callable[[str], None]
) -> tuple[list[str], list[str]]:
    """(destroyed sandbox ids, errors) over every non-namespace driver's state directory."""
    destroyed: list[str] = []
    errors: list[str] = []
    share = NetworkShare(settings)
    for name in driver_names():
        if name == "namespace":
            continue
        found = _sandboxes(state_dir_of(name, settings))
        if not found:
            continue
        progress(f"{name}: {len(found)} sandbox(es) to destroy")
        try:
            driver = build_driver(
                name,
                settings,
                agent_dir=install_agent(settings.data_dir / "agent"),
                runtime=install_runtime(settings.runtime_root),
                network=share,
            )
        except DriverError as exc:
            errors.append(f"{name}: cannot load its driver to destroy {found}: {exc}")
            continue

        anyio.run(_destroy_all, driver, destroyed, errors, progress)
    return destroyed, errors
