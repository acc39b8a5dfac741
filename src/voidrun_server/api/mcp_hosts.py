"""Which Host and Origin headers the MCP endpoint accepts (DNS-rebinding protection).

A web page that makes its own name resolve to 127.0.0.1 can send requests to a server on the
visitor's machine; they still carry the page's name in ``Host``. So ``/mcp`` answers only to the
names this server really has: loopback names and the bind address at ``VOIDRUN_PORT``, the host
of ``VOIDRUN_PUBLIC_BASE_URL``, ``VOIDRUN_PUBLIC_DOMAIN`` itself and whatever
``VOIDRUN_MCP_ALLOWED_HOSTS`` adds. Origins (sent by browsers only) must be ``http(s)://`` one of
those, or an entry of ``VOIDRUN_CORS_ORIGINS`` other than ``*``. The lists are in the form of
the ``mcp`` SDK's ``TransportSecuritySettings``: an exact value, or ``name:*`` for any port.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from mcp.server.transport_security import TransportSecuritySettings

from ..config import Settings

LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
ALL_ADDRESSES = ("", "0.0.0.0", "::")
DEFAULT_PORTS = {"http": 80, "https": 443}


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def allowed_hosts(settings: Settings) -> list[str]:
    names = list(LOOPBACK)
    if settings.host not in ALL_ADDRESSES:
        names.append(_bracketed(settings.host))
    hosts = [f"{name}:{settings.port}" for name in names]
    if settings.public_base_url:
        parts = urlsplit(settings.public_base_url)
        if parts.hostname:
            name = _bracketed(parts.hostname.lower())
            port = parts.port or DEFAULT_PORTS.get(parts.scheme)
            if parts.port is None or parts.port == DEFAULT_PORTS.get(parts.scheme):
                hosts.append(name)  # clients leave a default port out of Host
            if port is not None:
                hosts.append(f"{name}:{port}")
    domain = settings.public_domain.strip(".").lower()
    if domain:
        hosts += [domain, f"{domain}:*"]
    hosts += settings.mcp_allowed_hosts
    return list(dict.fromkeys(hosts))


def allowed_origins(settings: Settings, hosts: list[str]) -> list[str]:
    origins = [f"{scheme}://{host}" for host in hosts for scheme in ("http", "https")]
    origins += [origin for origin in settings.cors_origins if origin != "*"]
    return list(dict.fromkeys(origins))


def transport_security(settings: Settings) -> TransportSecuritySettings:
    hosts = allowed_hosts(settings)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=hosts,
        allowed_origins=allowed_origins(settings, hosts),
    )
