"""What a failed registry pull says: skopeo's last fatal line, in the registry's own words.

::

    ImageBuildError
     └── RegistryError                 any pull failure (message = the image's ``error``)
          ├── RegistryPolicyError      refused before connecting (internal address, insecure)
          ├── RegistryAuthError        unauthorized: bad or missing credentials
          ├── RegistryNotFoundError    manifest unknown / name unknown
          ├── RegistryUnreachableError connection refused, no such host, timed out
          └── RegistryLimitError       the image is over the pull's size cap
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Sequence

from .reference import Reference
from .registry_policy import RegistryError, RegistryPolicyError

_FATAL = re.compile(r'level=fatal msg="((?:[^"\\]|\\.)*)"')
# A direct connection skopeo made itself; in its namespace only the registry's own address has
# anything behind it, so any other one means the registry sent it somewhere not allowed.
_DIAL = re.compile(r"dial tcp (\S+): connect: (?:connection refused|network is unreachable)")


class RegistryAuthError(RegistryError):
    """The registry refused the credentials (or wants some)."""


class RegistryNotFoundError(RegistryError):
    """The registry has no such repository, tag or digest."""


class RegistryUnreachableError(RegistryError):
    """The registry could not be reached, or did not finish in time."""


class RegistryLimitError(RegistryError):
    """The image's blobs exceed the size cap of the pull."""


def fatal_message(lines: Sequence[str]) -> str:
    """The message of skopeo's last ``level=fatal`` line (or its last line)."""
    for line in reversed(lines):
        found = _FATAL.search(line)
        if found:
            return found.group(1).replace('\\"', '"').replace("\\\\", "\\")
    return lines[-1] if lines else "skopeo failed without a message"


def _is_registry(host_port: str, ref: Reference, addresses: Collection[str]) -> bool:
    host, _, port = host_port.rpartition(":")
    try:
        host = str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return False
    return port == str(ref.port) and host in addresses


def explain_failure(
    ref: Reference,
    lines: Sequence[str],
    refusals: Sequence[str],
    failures: Sequence[str],
    addresses: Collection[str],
) -> RegistryError:
    """The error for a skopeo run that failed.

    ``refusals`` and ``failures`` are the guard's (connections it refused, connections it could
    not make), already scrubbed; ``addresses`` are the registry's own, as checked.
    """
    if refusals:
        return RegistryPolicyError(f"pulling {ref}: {refusals[0]}")
    message = fatal_message(lines)
    if failures:
        return RegistryUnreachableError(f"pulling {ref} failed: {failures[0]} ({message})")
    dial = _DIAL.search(message)
    if dial and not _is_registry(dial.group(1), ref, addresses):
        return RegistryPolicyError(
            f"pulling {ref}: the registry sent the pull to {dial.group(1)}, which is not an "
            f"allowed registry address ({message})"
        )
    lowered = message.lower()
    kind: type[RegistryError] = RegistryError
    if "unauthorized" in lowered or "authentication required" in lowered:
        kind = RegistryAuthError
    elif "manifest unknown" in lowered or "name unknown" in lowered or "not found" in lowered:
        kind = RegistryNotFoundError
    elif any(w in lowered for w in ("connection refused", "no such host", "timeout", "reset")):
        kind = RegistryUnreachableError
    return kind(f"pulling {ref} failed: {message}")
