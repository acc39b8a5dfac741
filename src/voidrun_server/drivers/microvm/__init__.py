"""The ``microvm`` driver: QEMU microVMs with a Debian guest kernel (``driver.py``)."""

from voidrun_server.drivers.microvm.driver import MicrovmDriver, check_host

__all__ = ["MicrovmDriver", "check_host"]
