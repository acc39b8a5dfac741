"""Registry image references (``[registry[:port]/]repository[:tag][@digest]``), parsed strictly.

The grammar is the one the container tools share: the first path component is a registry when it
contains a ``.`` or a ``:`` or is ``localhost``; otherwise the image is on Docker Hub, whose
one-component names live under ``library/`` (``busybox`` is ``docker.io/library/busybox:latest``).
No scheme is accepted: a reference is never a URL.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from .progress import ImageBuildError

DEFAULT_REGISTRY = "docker.io"
# Docker Hub's API is not served at its canonical name; the container tools know this mapping.
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}
_HUB_ENDPOINT = "registry-1.docker.io"

_MAX_LENGTH = 512
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[A-Fa-f0-9]{32,}")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class InvalidReferenceError(ImageBuildError):
    """The image reference is malformed (the message says which part)."""


@dataclass(frozen=True)
class Reference:
    """A parsed reference. ``registry`` is ``host[:port]`` as named (IPv6 hosts in brackets)."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def host(self) -> str:
        """The registry's host name or address, lower case, without brackets or port."""
        return split_host_port(self.registry)[0]

    @property
    def port(self) -> int:
        """The registry's port (443 when none is named)."""
        return split_host_port(self.registry)[1] or 443

    @property
    def endpoint_host(self) -> str:
        """The host the registry's API is reached at (Docker Hub's differs from its name)."""
        return _HUB_ENDPOINT if self.host in _HUB_ALIASES else self.host

    @property
    def layout_tag(self) -> str:
        """The tag the pulled image gets in its OCI layout."""
        return self.tag or "latest"

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def split_host_port(registry: str) -> tuple[str, int | None]:
    """``host[:port]`` (``[v6]:port`` for IPv6) -> (lower-case host, port or None)."""
    if registry.startswith("["):
        host, sep, rest = registry[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise InvalidReferenceError(f"registry {registry!r} is not host[:port]")
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text = registry.partition(":")
        port_text = port_text if sep else None
    port = None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise InvalidReferenceError(f"registry {registry!r} has a bad port")
        port = int(port_text)
    return host.lower(), port


def _check_host(registry: str) -> None:
    host, _ = split_host_port(registry)
    if registry.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidReferenceError(f"registry {registry!r} is not an IPv6 address") from None
        return
    labels = host.rstrip(".").split(".") if host else []
    if not labels or len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise InvalidReferenceError(f"registry {registry!r} is not a host name or address")


def parse_reference(text: str) -> Reference:
    """Parse ``text`` or raise :class:`InvalidReferenceError` saying what is wrong with it."""
    if (
        not text
        or len(text) > _MAX_LENGTH
        or text != text.strip()
        or any(c.isspace() for c in text)
    ):
        raise InvalidReferenceError(
            f"image reference must be 1-{_MAX_LENGTH} characters without spaces"
        )
    if "://" in text:
        raise InvalidReferenceError(
            "image reference must not have a scheme: write registry.example.com/team/img:tag"
        )
    name, _, digest = text.partition("@")
    if "@" in text and not _DIGEST.fullmatch(digest):
        raise InvalidReferenceError(f"digest {digest!r} is not algorithm:hex")
    first, slash, remainder = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        registry, path = first, remainder
        _check_host(registry)
    else:
        registry, path = DEFAULT_REGISTRY, name
    last_slash = path.rfind("/")
    repository, colon, tag = (
        path.rpartition(":") if ":" in path[last_slash + 1 :] else (path, "", "")
    )
    if colon and not _TAG.fullmatch(tag):
        raise InvalidReferenceError(f"tag {tag!r} is not valid (letters, digits, _ . -)")
    components = repository.split("/")
    if not all(_COMPONENT.fullmatch(part) for part in components) or len(repository) > 255:
        raise InvalidReferenceError(
            f"repository {repository!r} must be lower-case path components (a-z 0-9 . _ -)"
        )
    if split_host_port(registry)[0] in _HUB_ALIASES:
        registry = DEFAULT_REGISTRY
        if len(components) == 1:
            repository = f"library/{repository}"
    return Reference(
        registry=registry,
        repository=repository,
        tag=tag if colon else (None if digest else "latest"),
        digest=digest or None,
    )
