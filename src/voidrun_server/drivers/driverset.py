"""Several drivers behind one: each sandbox runs on the driver its ``isolation`` names.

The services layer talks to one :class:`DriverSet` as it would to one driver. A create goes to
the driver ``SandboxSpec.isolation`` names; every other call goes to the driver that holds that
sandbox, which the set learns from creates, from each driver's ``recover()`` and from the rows
(``bind``, at start). An id it never heard of goes to the default driver (which answers GONE
or not-found for it).

Optional capabilities are checked per sandbox: pausing a sandbox whose driver cannot pause is
an :class:`UnsupportedByDriverError` (400) naming the driver, not a crash.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio

from voidrun_server.drivers.base import (
    DiskAccounting,
    Driver,
    DriverUnavailableError,
    Exportable,
    LayerExport,
    Networked,
    NetworkPolicy,
    NetworkUsage,
    Observable,
    Pausable,
    PortOpener,
    Retargetable,
    SandboxInfo,
    SandboxSpec,
    SandboxStats,
    UnsupportedByDriverError,
)

__all__ = ["DriverSet"]


class DriverSet:
    """The drivers this server runs, by isolation name, plus the ones it could not load."""

    def __init__(
        self,
        drivers: Mapping[str, Driver],
        *,
        default: str,
        unavailable: Mapping[str, DriverUnavailableError] | None = None,
    ) -> None:
        if default not in drivers:
            raise ValueError(f"the default isolation {default!r} has no driver")
        self.drivers = dict(drivers)
        self.default = default
        self.unavailable = dict(unavailable or {})
        self.starting: set[str] = set()  # offered, still being prepared (``add`` or ``fail``)
        self._owner: dict[str, str] = {}  # sandbox id -> isolation

    def add(self, name: str, driver: Driver) -> None:
        """A driver that finished starting after the server did."""
        self.drivers[name] = driver
        self.starting.discard(name)

    def fail(self, name: str, error: DriverUnavailableError) -> None:
        self.unavailable[name] = error
        self.starting.discard(name)

    def loaded(self, isolation: str) -> bool:
        return isolation in self.drivers

    # -- choosing ------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.default

    def choose(self, isolation: str | None) -> str:
        """``isolation`` checked (None: the default); 400 with a hint when this server does
        not run it."""
        name = isolation or self.default
        if name in self.drivers:
            return name
        if name in self.starting:
            raise self._starting(name)
        missing = self.unavailable.get(name)
        if missing is not None:
            raise UnsupportedByDriverError(
                f"isolation {name!r} is not available on this server",
                f"{missing.message}; {missing.hint}" if missing.hint else missing.message,
            )
        raise UnsupportedByDriverError(
            f"unknown isolation {name!r}",
            f"this server runs: {', '.join(sorted(self.drivers))}",
        )

    def bind(self, sandbox_id: str, isolation: str) -> None:
        """Record which driver holds ``sandbox_id`` (from its row)."""
        self._owner[sandbox_id] = isolation

    def isolation_of(self, sandbox_id: str) -> str:
        return self._owner.get(sandbox_id, self.default)

    def of(self, sandbox_id: str) -> Driver:
        """The driver holding ``sandbox_id``; 503 while its isolation is still starting or
        cannot run on this server any more."""
        name = self.isolation_of(sandbox_id)
        driver = self.drivers.get(name)
        if driver is not None:
            return driver
        if name in self.starting:
            raise self._starting(name)
        missing = self.unavailable.get(name)
        raise DriverUnavailableError(
            f"the {name} isolation of this sandbox is not available on this server",
            missing.hint if missing is not None else "add it to VOIDRUN_ISOLATIONS",
        )

    @staticmethod
    def _starting(name: str) -> DriverUnavailableError:
        return DriverUnavailableError(
            f"the {name} isolation is still starting",
            hint="its first start prepares what its sandboxes need (GET /api/health shows "
            "when it is ready); try again shortly",
        )

    def _unsupported(self, sandbox_id: str, what: str) -> UnsupportedByDriverError:
        return UnsupportedByDriverError(
            f"{what} is not supported by the {self.isolation_of(sandbox_id)} isolation",
            sandbox_id,
        )

    # -- Driver --------------------------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        name = self.choose(spec.isolation)
        self._owner[spec.sandbox_id] = name
        return await self.drivers[name].create(spec)

    async def start(self, sandbox_id: str) -> SandboxInfo:
        return await self.of(sandbox_id).start(sandbox_id)

    async def stop(self, sandbox_id: str) -> None:
        await self.of(sandbox_id).stop(sandbox_id)

    async def destroy(self, sandbox_id: str) -> None:
        await self.of(sandbox_id).destroy(sandbox_id)
        self._owner.pop(sandbox_id, None)

    async def inspect(self, sandbox_id: str) -> SandboxInfo:
        return await self.of(sandbox_id).inspect(sandbox_id)

    async def recover(self, isolation: str | None = None) -> dict[str, SandboxInfo]:
        """Every driver's sandboxes (or only ``isolation``'s), each bound to its driver."""
        found: dict[str, SandboxInfo] = {}
        for name, driver in list(self.drivers.items()):
            if isolation is not None and name != isolation:
                continue
            for sandbox_id, info in (await driver.recover()).items():
                self._owner[sandbox_id] = name
                found[sandbox_id] = info
        return found

    # -- optional capabilities, per sandbox ------------------------------------------------------

    async def pause(self, sandbox_id: str) -> None:
        driver = self.of(sandbox_id)
        if not isinstance(driver, Pausable):
            raise self._unsupported(sandbox_id, "pause")
        await driver.pause(sandbox_id)

    async def resume(self, sandbox_id: str) -> None:
        driver = self.of(sandbox_id)
        if not isinstance(driver, Pausable):
            raise self._unsupported(sandbox_id, "resume")
        await driver.resume(sandbox_id)

    async def stats(self, sandbox_id: str) -> SandboxStats:
        driver = self.of(sandbox_id)
        if not isinstance(driver, Observable):
            raise self._unsupported(sandbox_id, "usage")
        return await driver.stats(sandbox_id)

    async def export_layer(self, sandbox_id: str, dest: Path, *, uid_base: int) -> LayerExport:
        driver = self.of(sandbox_id)
        if not isinstance(driver, Exportable):
            raise self._unsupported(sandbox_id, "snapshot")
        return await driver.export_layer(sandbox_id, dest, uid_base=uid_base)

    async def retarget(
        self, sandbox_id: str, *, hostname: str, cpu: int, mem_mb: int, env: Mapping[str, str]
    ) -> None:
        driver = self.of(sandbox_id)
        if not isinstance(driver, Retargetable):
            raise self._unsupported(sandbox_id, "retarget")
        await driver.retarget(sandbox_id, hostname=hostname, cpu=cpu, mem_mb=mem_mb, env=env)

    async def open_port(self, sandbox_id: str, port: int, *, within: float) -> socket.socket:
        driver = self.of(sandbox_id)
        if not isinstance(driver, PortOpener):
            raise self._unsupported(sandbox_id, "port preview")
        return await driver.open_port(sandbox_id, port, within=within)

    def supports(self, sandbox_id: str, kind: type[Any]) -> bool:
        return isinstance(self.of(sandbox_id), kind)

    # -- networking ----------------------------------------------------------------------------

    def networked(self, isolation: str | None) -> Networked | None:
        """The driver of ``isolation`` if it wires sandboxes to the network, else None."""
        driver = self.drivers.get(isolation or self.default)
        if isinstance(driver, Networked) and driver.network_enabled:
            return driver
        return None

    def networked_of(self, sandbox_id: str) -> Networked | None:
        return self.networked(self.isolation_of(sandbox_id))

    def network_usage_snapshot(self) -> dict[str, NetworkUsage]:
        usage: dict[str, NetworkUsage] = {}
        for driver in self.drivers.values():
            if isinstance(driver, Networked) and driver.network_enabled:
                usage.update(driver.network_usage_snapshot())
        return usage

    async def set_network_policy(self, sandbox_id: str, policy: NetworkPolicy) -> None:
        driver = self.networked_of(sandbox_id)
        if driver is None:
            raise UnsupportedByDriverError(
                "sandbox networking is not available for this sandbox's isolation", sandbox_id
            )
        await driver.set_network_policy(sandbox_id, policy)

    async def serve_network(self) -> None:
        async with anyio.create_task_group() as group:
            for driver in self.drivers.values():
                if isinstance(driver, Networked) and driver.network_enabled:
                    group.start_soon(driver.serve_network)

    # -- host accounting -----------------------------------------------------------------------

    def unwritten_disk_bytes(self) -> int:
        return sum(
            d.unwritten_disk_bytes() for d in self.drivers.values() if isinstance(d, DiskAccounting)
        )

    def describe(self) -> dict[str, dict[str, Any]]:
        """Per isolation: available or why not, and what the driver says of itself
        (``describe()``: platform, accelerator...), for ``GET /api/health``."""
        out: dict[str, dict[str, Any]] = {}
        for name, driver in sorted(self.drivers.items()):
            about = getattr(driver, "describe", None)
            extra = about() if callable(about) else {}
            out[name] = {"available": True, "default": name == self.default, **extra}
        for name in sorted(self.starting):
            out[name] = {"available": False, "default": False, "reason": "starting"}
        for name, exc in sorted(self.unavailable.items()):
            out[name] = {
                "available": False,
                "default": False,
                "reason": exc.message,
                "hint": exc.hint,
            }
        return out
