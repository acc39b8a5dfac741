"""Validation of request arguments.

Arguments arrive as untrusted JSON; every handler funnels them through these helpers so a bad
field becomes a ``bad_request`` error naming the field instead of a crash deep inside an op.
"""

from __future__ import annotations

from .protocol import BAD_REQUEST, OpError, is_int

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, Mapping, Optional


def bad(message: str) -> OpError:
    return OpError(BAD_REQUEST, message)


def req_str(args: Mapping[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise bad(f"{key!r} must be a non-empty string")
    if "\0" in value:
        raise bad(f"{key!r} must not contain NUL bytes")
    return value


def opt_str(args: Mapping[str, Any], key: str) -> Optional[str]:
    if args.get(key) is None:
        return None
    return req_str(args, key)


def opt_number(args: Mapping[str, Any], key: str) -> Optional[float]:
    value = args.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise bad(f"{key!r} must be a non-negative number")
    return float(value)


def opt_int(args: Mapping[str, Any], key: str, default: int) -> int:
    value = args.get(key)
    if value is None:
        return default
    if not is_int(value) or value < 0:
        raise bad(f"{key!r} must be a non-negative integer")
    return int(value)


def abs_path(args: Mapping[str, Any], key: str = "path") -> str:
    path = req_str(args, key)
    if not path.startswith("/"):
        raise bad(f"{key!r} must be an absolute path, got {path!r}")
    return path


def env_map(args: Mapping[str, Any], key: str = "env") -> Dict[str, str]:
    value = args.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad(f"{key!r} must be an object of strings")
    for name, val in value.items():
        if not name or "=" in name or "\0" in name:
            raise bad(f"invalid environment variable name {name!r}")
        if not isinstance(val, str) or "\0" in val:
            raise bad(f"environment variable {name!r} must be a string without NUL bytes")
    return dict(value)
