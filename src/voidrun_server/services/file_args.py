"""What the files API accepts (CONTRACT §A.6, limits §C.12), checked before the sandbox is
touched: every problem here is a 400.

Paths are made absolute and collapsed here, before anything reaches the agent (which resolves
them with real syscalls inside the sandbox's mount namespace, never through a shell).
"""

from __future__ import annotations

import json
import posixpath
import re

from ..errors import InvalidInputError

MAX_PATH = 4096
MAX_PATTERN = 1024
MAX_LINES = 10_000
DEFAULT_LINES = 10
MODE = re.compile(r"^[0-7]{3,4}$")
ARCHIVE_FORMATS = ("tar", "tar.gz", "tar.bz2", "zip")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")


def clean_path(value: str | None, name: str = "path", default: str | None = None) -> str:
    """Absolute and collapsed; 400 for missing, NUL bytes or over 4096 characters."""
    if not value:
        if default is None:
            raise InvalidInputError(f"{name} is required")
        value = default
    if "\x00" in value:
        raise InvalidInputError(f"Invalid {name}", "must not contain NUL bytes")
    if len(value) > MAX_PATH:
        raise InvalidInputError(f"Invalid {name}", f"at most {MAX_PATH} characters")
    return "/" + posixpath.normpath("/" + value).lstrip("/")


def file_target(path: str | None) -> str:
    """A path that can name a file (uploads): not the root."""
    target = clean_path(path)
    if target == "/":
        raise InvalidInputError("Invalid path", "path must name a file")
    return target


def from_to(source: str | None, target: str | None) -> tuple[str, str]:
    if not source or not target:
        raise InvalidInputError("from and to required")
    return clean_path(source, "from"), clean_path(target, "to")


def line_count(lines: str | None) -> int:
    """``head``/``tail`` line count: 1..10000; absent or not a number means the default."""
    try:
        return max(1, min(MAX_LINES, int(lines))) if lines else DEFAULT_LINES
    except ValueError:
        return DEFAULT_LINES


def search_pattern(pattern: str | None) -> str:
    if not pattern:
        raise InvalidInputError("pattern required")
    if len(pattern) > MAX_PATTERN or "\x00" in pattern:
        raise InvalidInputError("Invalid pattern", f"at most {MAX_PATTERN} characters, no NUL")
    return pattern


def file_mode(mode: str | None) -> int:
    if not mode or not MODE.match(mode):
        raise InvalidInputError("Invalid mode", "must match ^[0-7]{3,4}$")
    return int(mode, 8)


def archive_format(value: str | None) -> str:
    fmt = value or "tar.gz"
    if fmt not in ARCHIVE_FORMATS:
        raise InvalidInputError("Unsupported format", f"use one of {', '.join(ARCHIVE_FORMATS)}")
    return fmt


def archive_path(value: str | None) -> str:
    source = clean_path(value, "archive")
    if not source.lower().endswith((".zip", *ARCHIVE_SUFFIXES)):
        raise InvalidInputError("Unsupported archive type", "use .tar, .tar.gz/.tgz, .zip, …")
    return source


def created_content(content: str | None, content_type: str, body: bytes) -> bytes | None:
    """What ``files/create`` writes: a non-empty body wins over the ``content`` query. A JSON
    body gives ``{"content": ...}`` (absent or null: the query's); any other content type
    makes the raw body the content. None: create an empty file (or keep an existing one)."""
    fallback = content.encode() if content is not None else None
    if not body.strip():
        return fallback
    media = content_type.split(";")[0].strip().lower()
    if media and media != "application/json" and not media.endswith("+json"):
        return body
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise InvalidInputError("Invalid JSON body", str(exc)) from None
    value = payload.get("content") if isinstance(payload, dict) else None
    if value is None:
        return fallback
    if not isinstance(value, str):
        raise InvalidInputError("Invalid request", "content must be a string")
    return value.encode()
