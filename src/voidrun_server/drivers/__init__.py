"""Sandbox runtimes behind one small interface (``base.py``), picked by name (``registry.py``).

Driver packages (``namespace/`` today) are imported lazily through the registry, so importing
this package never requires a runtime's dependencies.
"""

from voidrun_server.drivers.base import (
    Driver,
    DriverError,
    DriverTimeoutError,
    DriverUnavailableError,
    Observable,
    Pausable,
    SandboxInfo,
    SandboxNotFoundError,
    SandboxSpec,
    SandboxState,
    SandboxStateError,
    SandboxStats,
)
from voidrun_server.drivers.registry import (
    available_drivers,
    create_driver,
    driver_names,
    load_driver_class,
)

__all__ = [
    "Driver",
    "DriverError",
    "DriverTimeoutError",
    "DriverUnavailableError",
    "Observable",
    "Pausable",
    "SandboxInfo",
    "SandboxNotFoundError",
    "SandboxSpec",
    "SandboxState",
    "SandboxStateError",
    "SandboxStats",
    "available_drivers",
    "create_driver",
    "driver_names",
    "load_driver_class",
]
