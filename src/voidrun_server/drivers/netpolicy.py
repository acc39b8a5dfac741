"""Egress policy entries: parsing and checking, with no host dependency.

A sandbox's policy (``NetworkPolicy`` in ``base.py``) lists destinations in ``allowOut`` and
``denyOut``. Each entry is one of:

* an IPv4 or IPv6 address or CIDR (``203.0.113.7``, ``198.51.100.0/24``, ``2001:db8::/32``);
* a domain name (``example.org``), which covers that name and every name below it;
* a wildcard (``*.example.org``), which covers the same names (the resolver matches by suffix,
  so the two forms are enforced alike; see docs/network.md).

The services layer checks a request with :func:`problems` (every problem, for a 400 with
details); drivers turn checked entries into rules with :func:`split`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["MAX_ENTRIES", "Destinations", "normalise", "problems", "split"]

MAX_ENTRIES = 200
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Destinations:
    """One list of entries, split by kind (domains are bare suffixes, lower case)."""

    v4: tuple[ipaddress.IPv4Network, ...] = ()
    v6: tuple[ipaddress.IPv6Network, ...] = ()
    domains: tuple[str, ...] = ()


def _network(entry: str) -> IpNetwork | None:
    if not any(c in entry for c in ".:") or not re.fullmatch(r"[0-9a-fA-F.:/]+", entry):
        return None
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None


def _domain(entry: str) -> str | None:
    """The suffix a domain or wildcard entry stands for, or None when it is not one."""
    name = entry.lower().rstrip(".")
    if name.startswith("*."):
        name = name[2:]
    if not name or len(name) > 253 or "*" in name:
        return None
    labels = name.split(".")
    if len(labels) < 2 or labels[-1].isdigit():
        return None
    if not all(_LABEL.match(label) for label in labels):
        return None
    return name


def normalise(entry: str) -> str:
    """The canonical spelling of a valid entry (CIDRs compressed, names lower case)."""
    entry = entry.strip()
    network = _network(entry)
    if network is not None:
        return (
            str(network)
            if network.prefixlen < network.max_prefixlen
            else str(network.network_address)
        )
    wildcard = entry.startswith("*.")
    name = _domain(entry)
    if name is None:
        raise ValueError(f"not an address, CIDR or domain name: {entry!r}")
    return f"*.{name}" if wildcard else name


def problems(field: str, entries: Sequence[object]) -> list[str]:
    """Everything wrong with one list, as ``field[i]: why`` lines (empty when valid)."""
    found: list[str] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, str):
            found.append(f"{field}[{index}]: must be a string")
            continue
        text = entry.strip()
        looks_ip = bool(re.fullmatch(r"[0-9a-fA-F.:/]+", text)) and (
            "/" in text or ":" in text or text.replace(".", "").isdigit()
        )
        if looks_ip and _network(text) is None:
            found.append(f"{field}[{index}]: invalid address or CIDR {entry!r}")
        elif not looks_ip and _domain(text) is None:
            found.append(f"{field}[{index}]: invalid domain name {entry!r}")
    return found


def split(entries: Iterable[str]) -> Destinations:
    """Checked entries by kind (invalid ones are skipped: the services layer refused them)."""
    v4: list[ipaddress.IPv4Network] = []
    v6: list[ipaddress.IPv6Network] = []
    domains: list[str] = []
    for entry in entries:
        network = _network(entry.strip())
        if isinstance(network, ipaddress.IPv4Network):
            v4.append(network)
        elif isinstance(network, ipaddress.IPv6Network):
            v6.append(network)
        else:
            name = _domain(entry.strip())
            if name is not None and name not in domains:
                domains.append(name)
    return Destinations(tuple(v4), tuple(v6), tuple(domains))
