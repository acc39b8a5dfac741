"""Registry references and the address policy of pulls (no network, no root)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path

import pytest

from voidrun_server.config import Settings
from voidrun_server.images import registry as registry_module
from voidrun_server.images.reference import InvalidReferenceError, Reference, parse_reference
from voidrun_server.images.registry import (
    RegistryAuthError,
    RegistryError,
    RegistryNotFoundError,
    RegistryUnreachableError,
    pull_to_layout,
)
from voidrun_server.images.registry_errors import explain_failure
from voidrun_server.images.registry_policy import (
    IPAddress,
    RegistryPolicy,
    RegistryPolicyError,
    is_internal,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", Reference("docker.io", "library/busybox", "latest", None)),
        ("busybox:1.36", Reference("docker.io", "library/busybox", "1.36", None)),
        ("team/app", Reference("docker.io", "team/app", "latest", None)),
        ("docker.io/busybox", Reference("docker.io", "library/busybox", "latest", None)),
        ("index.docker.io/library/x:1", Reference("docker.io", "library/x", "1", None)),
        ("localhost/x", Reference("localhost", "x", "latest", None)),
        ("localhost:5000/a/b:v1", Reference("localhost:5000", "a/b", "v1", None)),
        ("127.0.0.1:5000/img:tag", Reference("127.0.0.1:5000", "img", "tag", None)),
        ("[::1]:5000/img", Reference("[::1]:5000", "img", "latest", None)),
        ("reg.example.com/team/img:tag", Reference("reg.example.com", "team/img", "tag", None)),
        (
            "reg.example.com/img@sha256:" + "a" * 64,
            Reference("reg.example.com", "img", None, "sha256:" + "a" * 64),
        ),
        (
            "reg.example.com/img:t@sha256:" + "b" * 64,
            Reference("reg.example.com", "img", "t", "sha256:" + "b" * 64),
        ),
    ],
)
def test_parse_reference(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected


def test_reference_helpers() -> None:
    hub = parse_reference("busybox")
    assert str(hub) == "docker.io/library/busybox:latest"
    assert (hub.host, hub.port, hub.endpoint_host) == ("docker.io", 443, "registry-1.docker.io")
    local = parse_reference("[::1]:5000/img@sha256:" + "c" * 64)
    assert (local.host, local.port, local.endpoint_host, local.layout_tag) == (
        "::1",
        5000,
        "::1",
        "latest",
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        " busybox",
        "https://reg.example.com/img:1",
        "docker://busybox",
        "Busybox",
        "reg.example.com/Team/img",
        "reg.example.com:99999/img",
        "reg.example.com:port/img",
        "img:bad tag",
        "img:-dash",
        "img@sha256:short",
        "a" * 600,
        "reg..example/img",
        "[not-v6]:5000/img",
        "img//x",
    ],
)
def test_bad_references_are_refused(text: str) -> None:
    with pytest.raises(InvalidReferenceError):
        parse_reference(text)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "169.254.169.254",
        "0.0.0.0",
        "224.0.0.1",
        "239.1.1.1",
        "240.0.0.1",
        "::1",
        "fe80::1",
        "fd00::1",
        "ff02::1",
        "::",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
    ],
)
def test_internal_addresses(address: str) -> None:
    assert is_internal(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111"])
def test_public_addresses(address: str) -> None:
    assert not is_internal(ipaddress.ip_address(address))


def _resolver(table: dict[str, list[str]]) -> Callable[[str, int], list[IPAddress]]:
    def resolve(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address(a) for a in table[host]]

    return resolve


def test_policy_resolves_names_and_checks_every_address() -> None:
    policy = RegistryPolicy(
        ["listed.example:5000", "anyport.example", "[::1]:7000"],
        _resolver(
            {
                "public.example": ["93.184.216.34"],
                "mixed.example": ["93.184.216.34", "10.0.0.7"],
                "listed.example": ["10.0.0.8"],
                "anyport.example": ["192.168.0.2"],
                "::1": ["::1"],
            }
        ),
    )
    assert policy.check("public.example", 443) == [ipaddress.ip_address("93.184.216.34")]
    with pytest.raises(RegistryPolicyError, match="internal address 10.0.0.7"):
        policy.check("mixed.example", 443)
    assert policy.check("listed.example", 5000)
    with pytest.raises(RegistryPolicyError):
        policy.check("listed.example", 5001)  # listed with a port: only that port
    assert policy.check("anyport.example", 1234)
    assert policy.check("[::1]", 7000)
    policy.check_insecure("LISTED.example", 5000)
    with pytest.raises(RegistryPolicyError, match="allowed only for registries listed"):
        policy.check_insecure("public.example", 443)


def test_setting_validates_entries() -> None:
    ok = Settings(image_insecure_registries=["10.0.0.5:5000", "Reg.Lan", "[::1]:5000"])
    assert ok.image_insecure_registries == ["10.0.0.5:5000", "reg.lan", "[::1]:5000"]
    for bad in ("http://reg.lan", "reg.lan/path", "reg lan"):
        with pytest.raises(ValueError, match="VOIDRUN_IMAGE_INSECURE_REGISTRIES"):
            Settings(image_insecure_registries=[bad])


def test_pull_without_root_fails_closed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(registry_module.os, "geteuid", lambda: 1000)
    with pytest.raises(RegistryError, match="need the server to run as root"):
        pull_to_layout(
            "93.184.216.34/img:1",
            tmp_path,
            credentials=None,
            insecure=False,
            allowed_insecure=[],
            progress=lambda _f, _l: None,
            timeout=5,
        )
    assert list(tmp_path.iterdir()) == []


def test_failures_are_explained_in_the_registrys_words() -> None:
    ref = parse_reference("10.0.0.5:5000/team/img:1")
    own = {"10.0.0.5"}

    def fatal(message: str) -> list[str]:
        escaped = message.replace('"', '\\"')
        return ["Getting image source signatures", f'time="x" level=fatal msg="{escaped}"']

    cases: list[tuple[list[str], list[str], list[str], type[RegistryError], str]] = [
        (fatal('reading manifest 1: unauthorized: authentication required'), [], [],
         RegistryAuthError, "unauthorized: authentication required"),
        (fatal("reading manifest 1 in x: manifest unknown: manifest unknown"), [], [],
         RegistryNotFoundError, "manifest unknown"),
        (fatal('Get "http://10.0.0.5:5000/v2/": dial tcp 10.0.0.5:5000: connect: connection '
               "refused"), [], [], RegistryUnreachableError, "connection refused"),
        (fatal('Get "http://10.9.9.9/x": dial tcp 10.9.9.9:80: connect: network is unreachable'),
         [], [], RegistryPolicyError, "sent the pull to 10.9.9.9:80"),
        (fatal("proxyconnect: Forbidden"), ["connection to a:443 refused: internal"], [],
         RegistryPolicyError, "connection to a:443 refused"),
        (fatal("proxyconnect: Bad Gateway"), [], ["connecting to a:443 failed: refused"],
         RegistryUnreachableError, "connecting to a:443 failed"),
        ([], [], [], RegistryError, "skopeo failed without a message"),
    ]  # fmt: skip
    for lines, refusals, failures, kind, words in cases:
        error = explain_failure(ref, lines, refusals, failures, own)
        assert type(error) is kind, (lines, error)
        assert words in str(error)
        assert str(ref) in str(error)
