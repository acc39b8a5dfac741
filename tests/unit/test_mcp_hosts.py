"""The Host and Origin lists of the MCP endpoint's DNS-rebinding protection (api/mcp_hosts.py)."""

from __future__ import annotations

from pathlib import Path

from voidrun_server.api.mcp_hosts import allowed_hosts, allowed_origins, transport_security
from voidrun_server.config import Settings


def settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(data_dir=tmp_path, **values)  # type: ignore[arg-type]


def test_loopback_names_at_the_port_and_a_specific_bind_address(tmp_path: Path) -> None:
    default = allowed_hosts(settings(tmp_path, port=8123))
    assert default == ["127.0.0.1:8123", "localhost:8123", "[::1]:8123"]
    bound = allowed_hosts(settings(tmp_path, host="10.1.2.3", port=80))
    assert bound == ["127.0.0.1:80", "localhost:80", "[::1]:80", "10.1.2.3:80"]
    v6 = allowed_hosts(settings(tmp_path, host="fd00::5", port=80))
    assert "[fd00::5]:80" in v6
    for everywhere in ("0.0.0.0", "::"):
        everything = allowed_hosts(settings(tmp_path, host=everywhere, port=80))
        assert everything == ["127.0.0.1:80", "localhost:80", "[::1]:80"]


def test_public_url_domain_and_extra_hosts(tmp_path: Path) -> None:
    hosts = allowed_hosts(
        settings(
            tmp_path,
            port=8080,
            public_base_url="https://Sandbox.Example.com/",
            public_domain="preview.example.com.",
            mcp_allowed_hosts=["lan-box:8080", "other:*"],
        )
    )
    assert hosts[3:] == [
        "sandbox.example.com",
        "sandbox.example.com:443",
        "preview.example.com",
        "preview.example.com:*",
        "lan-box:8080",
        "other:*",
    ]
    odd_port = allowed_hosts(settings(tmp_path, public_base_url="http://box.example:9000"))
    assert odd_port[3:] == ["box.example:9000"]  # a non-default port is always in Host


def test_origins_are_the_hosts_plus_explicit_cors_origins(tmp_path: Path) -> None:
    config = settings(tmp_path, port=8080, cors_origins=["*", "https://app.example"])
    origins = allowed_origins(config, allowed_hosts(config))
    assert origins[:2] == ["http://127.0.0.1:8080", "https://127.0.0.1:8080"]
    assert "https://app.example" in origins and "*" not in origins
    security = transport_security(config)
    assert security.enable_dns_rebinding_protection
    assert security.allowed_hosts == allowed_hosts(config)
