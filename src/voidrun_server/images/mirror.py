"""Which Debian mirror to build images from: the host's own apt configuration.

A host behind a mirror or a proxy already says in its apt sources where Debian comes from, so
image builds use the same place (``VOIDRUN_DEBIAN_MIRROR`` overrides it). Both formats are read:
deb822 ``*.sources`` files (``URIs:``/``Suites:``) and one-line ``sources.list`` entries.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

APT_DIR = Path("/etc/apt")
_ONE_LINE = re.compile(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)")


def host_debian_mirror(suite: str, apt_dir: Path = APT_DIR) -> str | None:
    """The first ``deb`` source of the host that serves ``suite`` itself (not -security or
    -updates), or None when the host has none (then the setting must name one)."""
    for uri, suites in _sources(apt_dir):
        if suite in suites:
            return uri.rstrip("/")
    return None


def _sources(apt_dir: Path) -> Iterator[tuple[str, list[str]]]:
    one_line = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in one_line:
        for line in _read(path).splitlines():
            if match := _ONE_LINE.match(line):
                yield match.group(1), [match.group(2)]
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", _read(path)):
            fields = _deb822(stanza)
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                for uri in fields.get("uris", "").split():
                    yield uri, fields.get("suites", "").split()


def _deb822(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in stanza.splitlines():
        if line.startswith("#") or ":" not in line or line[:1].isspace():
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    return fields


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
