"""What crosses between an API replica and a node: the tunnel hello and driver errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from voidrun_server.agentclient._tunnel import hello
from voidrun_server.drivers.base import (
    DriverUnavailableError,
    NetworkPolicy,
    PortClosedError,
    SandboxSpec,
    SandboxStateError,
)
from voidrun_server.drivers.remote import wire
from voidrun_server.node.tunnel import Refused, parse_hello

BOX = "6b0c29be415ce175a7e9f74e"


def test_hello_round_trip() -> None:
    assert parse_hello(hello("tok", BOX, "agent"), "tok") == (BOX, None)
    assert parse_hello(hello("tok", BOX, "port 8080"), "tok") == (BOX, 8080)


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (hello("wrong", BOX, "agent"), "auth"),
        (hello("tok", "../etc", "agent"), "bad"),
        (hello("tok", BOX, "port 0"), "bad"),
        (hello("tok", BOX, "port 70000"), "bad"),
        (hello("tok", BOX, "shell"), "bad"),
        (b"VRTUNNEL 2 tok " + BOX.encode() + b" agent\n", "bad"),
        (b"GET / HTTP/1.1\r\n", "bad"),
        (b"\xff\xfe\n", "bad"),
    ],
)
def test_bad_hellos_are_refused(line: bytes, kind: str) -> None:
    with pytest.raises(Refused) as refused:
        parse_hello(line, "tok")
    assert refused.value.kind == kind


def test_an_empty_token_refuses_everyone() -> None:
    with pytest.raises(Refused):
        parse_hello(hello("", BOX, "agent"), "")


def test_spec_round_trip() -> None:
    spec = SandboxSpec(
        sandbox_id=BOX,
        hostname="h",
        rootfs=Path("/images/code/rootfs"),
        cpu=2,
        mem_mb=512,
        disk_mb=256,
        env={"A": "1"},
        network=NetworkPolicy(allow_internet=False, allow_out=("10.0.0.0/8",)),
        layers=(Path("/l1"),),
        isolation="namespace",
    )
    assert wire.spec_from_wire(wire.spec_to_wire(spec)) == spec


@pytest.mark.parametrize(
    "error",
    [
        SandboxStateError("wrong state", BOX),
        PortClosedError(details="port 80"),
        DriverUnavailableError("no kvm", "install qemu"),
    ],
)
def test_driver_errors_come_back_as_the_same_class(error: Exception) -> None:
    assert isinstance(error, wire.DriverError)
    back = wire.error_from_wire(wire.error_to_wire(error), "n1")
    assert type(back) is type(error)
    if isinstance(error, DriverUnavailableError):
        assert "n1" in back.message and back.hint == error.hint  # type: ignore[attr-defined]
