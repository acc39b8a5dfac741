"""The exception → status table."""

from __future__ import annotations

import pytest

from voidrun_server import errors
from voidrun_server.api.errors import STATUS_BY_ERROR, status_for
from voidrun_server.drivers import base as _driver_errors  # noqa: F401 - their classes count too
from voidrun_server.drivers.microvm import qmp as _qmp_errors  # noqa: F401 - and this one
from voidrun_server.drivers.remote import driver as _remote_errors  # noqa: F401 - and the fleet's


def all_error_classes() -> list[type[errors.VoidRunError]]:
    found: list[type[errors.VoidRunError]] = []
    pending: list[type[errors.VoidRunError]] = [errors.VoidRunError]
    while pending:
        cls = pending.pop()
        if cls not in found:  # a class with two mapped parents is reached twice
            found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


# The status each error class answers with (CONTRACT's error table); a new class needs a row.
EXPECTED_STATUS = {
    "VoidRunError": 500,
    "InvalidInputError": 400,
    "InvalidStateError": 400,
    "AuthenticationError": 401,
    "PermissionDeniedError": 403,
    "QuotaExceededError": 403,
    "NotFoundError": 404,
    "ConflictError": 409,
    "PayloadTooLargeError": 413,
    "UriTooLongError": 414,
    "OperationFailedError": 500,
    "SandboxUnavailableError": 502,
    "ServiceUnavailableError": 503,
    "DeadlineExceededError": 504,
    "RequestTimeoutError": 408,
    "InsufficientStorageError": 507,
    "CapacityError": 529,
    "DriverError": 500,
    "SandboxNotFoundError": 500,
    "SandboxStateError": 500,
    "DriverUnavailableError": 503,
    "NodeUnreachableError": 503,
    "DriverTimeoutError": 504,
    "PortClosedError": 502,
    "UnsupportedByDriverError": 400,
    "QmpError": 500,
    "UpstreamError": 502,
    "UpstreamTimeoutError": 504,
    "TooManyConnectionsError": 429,
}


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda c: c.__name__)
def test_every_error_maps_to_its_status(cls: type[errors.VoidRunError]) -> None:
    assert cls.__name__ in EXPECTED_STATUS, f"{cls.__name__}: add its status to EXPECTED_STATUS"
    assert status_for(cls("x")) == EXPECTED_STATUS[cls.__name__]
    if cls is not errors.VoidRunError:
        mapped = [c for c in cls.__mro__ if c in STATUS_BY_ERROR and c is not errors.VoidRunError]
        assert mapped, f"{cls.__name__} needs a row in STATUS_BY_ERROR or a mapped parent"


def test_every_expected_class_exists() -> None:
    assert set(EXPECTED_STATUS) == {cls.__name__ for cls in all_error_classes()}


def test_driver_errors() -> None:
    from voidrun_server.drivers.base import (
        DriverError,
        DriverTimeoutError,
        DriverUnavailableError,
    )

    assert status_for(DriverError("x")) == 500
    assert status_for(DriverUnavailableError("x", hint="install y")) == 503
    assert status_for(DriverTimeoutError("x")) == 504


def test_subclass_inherits_parent_status() -> None:
    assert errors.InvalidStateError not in STATUS_BY_ERROR
    assert status_for(errors.InvalidStateError(details="sandbox is not running")) == 400


def test_message_and_details() -> None:
    exc = errors.NotFoundError("Sandbox not found", "abc")
    assert (exc.message, exc.details) == ("Sandbox not found", "abc")
    assert errors.AuthenticationError().message == "invalid or inactive API key"
