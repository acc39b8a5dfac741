"""Which registry addresses a pull may reach.

A tenant names the registry, so a pull must never become a way into the server's own network:
an address that is not globally routable (loopback, RFC 1918, CGNAT, link-local, ULA, multicast,
reserved, unspecified, and IPv4-mapped forms of those) is reached only when the operator lists
the registry in ``VOIDRUN_IMAGE_INSECURE_REGISTRIES``. The same list is the only way to talk plain
HTTP or skip certificate checks (a request's ``insecure: true``).

An entry is ``host`` (any port) or ``host:port`` (``[v6]:port`` for IPv6), compared case-blind
with the host exactly as the reference (or a redirect) names it. Names are resolved here and
every address checked, and the connection then goes to an address that was checked (see
``registry_guard``), so a name that resolves differently a moment later changes nothing.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence

from .progress import ImageBuildError
from .reference import InvalidReferenceError, split_host_port

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[IPAddress]]


class RegistryError(ImageBuildError):
    """A registry pull failed; the message says why, with the registry's own words if any."""


class RegistryPolicyError(RegistryError):
    """The pull was refused before any connection to the address it would have reached."""


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (an address literal is itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise RegistryPolicyError(f"cannot resolve registry host {host}: {exc}") from None
    found: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address not in found:
            found.append(address)
    return found


def is_internal(address: IPAddress) -> bool:
    """True for any address that is not plainly a public unicast one."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None and is_internal(mapped):
            return True
    return (
        not address.is_global
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or address.is_loopback
        or address.is_link_local
    )


class RegistryPolicy:
    """The operator's list of registries allowed internal addresses and plain HTTP."""

    def __init__(self, listed: Sequence[str], resolver: Resolver = resolve) -> None:
        self._any_port: set[str] = set()
        self._exact: set[tuple[str, int]] = set()
        self._resolver = resolver
        for entry in listed:
            try:
                host, port = split_host_port(entry.strip())
            except InvalidReferenceError:
                continue  # config.py validates entries; nothing unparsable can match anyway
            if port is None:
                self._any_port.add(host)
            else:
                self._exact.add((host, port))

    def is_listed(self, host: str, port: int) -> bool:
        host = host.lower().strip("[]")
        return host in self._any_port or (host, port) in self._exact

    def check(self, host: str, port: int) -> list[IPAddress]:
        """The addresses a connection to ``host:port`` may use, or :class:`RegistryPolicyError`."""
        addresses = self._resolver(host.strip("[]"), port)
        if not addresses:
            raise RegistryPolicyError(f"registry host {host} has no address")
        if self.is_listed(host, port):
            return addresses
        internal = [str(a) for a in addresses if is_internal(a)]
        if internal:
            raise RegistryPolicyError(
                f"{host}:{port} resolves to the internal address {', '.join(internal)}; "
                "registries on loopback or private addresses must be listed in "
                "VOIDRUN_IMAGE_INSECURE_REGISTRIES"
            )
        return addresses

    def check_insecure(self, host: str, port: int) -> None:
        if not self.is_listed(host, port):
            raise RegistryPolicyError(
                f"insecure (plain HTTP, unverified TLS) is allowed only for registries listed in "
                f"VOIDRUN_IMAGE_INSECURE_REGISTRIES, and {host}:{port} is not"
            )
