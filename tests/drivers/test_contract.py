"""Runs the shared driver contract (``contract.py``) against every driver with a harness.

The ``harness`` fixture in ``conftest.py`` is parametrized over ``DRIVER_HARNESSES``; adding a
driver there (and its ``<name>_harness`` fixture) runs this whole suite against it.
"""

from __future__ import annotations

from tests.drivers.contract import DriverContract


class TestContract(DriverContract):
    pass
