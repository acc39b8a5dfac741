"""Value rules, with the reference server's error texts: sandbox creates (CONTRACT §C.4), list
paging and filters (§C.3), and the command, env and cwd of every way to run something (§A.5)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InvalidInputError, PermissionDeniedError
from ..schemas.sandboxes import PortSpec, SandboxCreate
from .lifecycle import Status

DNS_1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
LABEL_KEY = re.compile(r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$")
MAX_LABELS = 5
MAX_LABEL_LENGTH = 20
MAX_PORTS = 4
MAX_ENV_VARS = 256
MAX_ENV_BYTES = 128 * 1024
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_COMMAND_CHARS = 100_000
MAX_PATH_CHARS = 4096


@dataclass(frozen=True)
class CreateRequest:
    """A create request after defaults and validation."""

    name: str
    image: str
    cpu: int
    mem: int
    sync: bool
    env_vars: dict[str, str]
    auto_sleep: bool
    region: str
    ref_id: str
    labels: dict[str, str]
    ports: list[PortSpec]


def invalid(message: str, details: str | None = None) -> InvalidInputError:
    return InvalidInputError(message, details)


def validate_name(raw: str) -> str:
    name = raw.strip()
    if not name:
        raise invalid("invalid name: value cannot be empty")
    if len(name) > 253 or not DNS_1123_SUBDOMAIN.match(name):
        raise invalid(
            "invalid name: value must be a valid DNS-1123 subdomain (lowercase letters, digits, "
            "'-' and '.', starting and ending with a letter or digit, at most 253 characters)",
            name[:300],
        )
    return name


def validate_labels(labels: dict[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise invalid(f"too many labels: {len(labels)} given, max is {MAX_LABELS}")
    for key, value in labels.items():
        if len(key) > MAX_LABEL_LENGTH or not LABEL_KEY.match(key):
            raise invalid(
                f'invalid label key "{key[:40]}": must match {LABEL_KEY.pattern} and be at most '
                f"{MAX_LABEL_LENGTH} characters"
            )
        if len(value) > MAX_LABEL_LENGTH or "," in value or "=" in value:
            raise invalid(
                f'invalid label value for "{key}": at most {MAX_LABEL_LENGTH} characters, '
                "no ',' or '='"
            )
    return dict(labels)


def validate_ports(ports: list[PortSpec] | None, legacy: list[int] | None) -> list[PortSpec]:
    if legacy:
        if len(legacy) > MAX_PORTS:
            raise invalid(f"too many publishPorts: {len(legacy)} given, max is {MAX_PORTS}")
        for port in legacy:
            if not 1 <= port <= 65535:
                raise invalid(f"invalid publishPort {port}: must be between 1 and 65535")
    merged = list(ports or []) + [PortSpec(protocol="http", port=p) for p in legacy or []]
    if len(merged) > MAX_PORTS:
        raise invalid(f"too many ports: {len(merged)} given, max is {MAX_PORTS}")
    seen: set[int] = set()
    for spec in merged:
        if not 1 <= spec.port <= 65535:
            raise invalid(f"invalid port {spec.port}: must be between 1 and 65535")
        if spec.port in seen:
            raise invalid(f"duplicate port {spec.port}")
        seen.add(spec.port)
    return merged


def validate_env(env: dict[str, str]) -> dict[str, str]:
    if len(env) > MAX_ENV_VARS:
        raise invalid(f"too many envVars: {len(env)} given, max is {MAX_ENV_VARS}")
    if sum(len(k) + len(v) for k, v in env.items()) > MAX_ENV_BYTES:
        raise invalid(f"envVars too large: at most {MAX_ENV_BYTES} bytes in total")
    for key, value in env.items():
        if not ENV_NAME.match(key):
            raise invalid(f'invalid envVars name "{key[:40]}": use letters, digits and _')
        if "\x00" in value:
            raise invalid(f'invalid envVars value for "{key}": NUL byte')
    return dict(env)


def validate_create(body: SandboxCreate, default_image: str, org_id: str) -> CreateRequest:
    name = validate_name(body.name)
    cpu = 1 if body.cpu is None else body.cpu
    if not 1 <= cpu <= 8:
        raise invalid("invalid cpu count: must be between 1 and 8")
    mem = 1024 if body.mem is None else body.mem
    if not 1024 <= mem <= 16384:
        raise invalid("invalid memory size: must be between 1 GiB and 16 GiB")
    if body.org_id and body.org_id != org_id:
        # CONTRACT §C.1 [R]: the org comes from the key; a different one is refused with 403.
        raise PermissionDeniedError("orgId does not match the API key's org", "omit orgId")
    image = (body.image or "").strip() or default_image
    if len(image) > 151:
        raise invalid("invalid image: at most 151 characters")
    return CreateRequest(
        name=name,
        image=image,
        cpu=cpu,
        mem=mem,
        sync=True if body.sync is None else body.sync,
        env_vars=validate_env(body.env_vars or {}),
        auto_sleep=True if body.auto_sleep is None else body.auto_sleep,
        region=(body.region or "").strip(),
        ref_id=(body.ref_id or "").strip(),
        labels=validate_labels(body.labels or {}),
        ports=validate_ports(body.ports, body.publish_ports),
    )


def parse_label_filter(raw: str | None) -> dict[str, str]:
    """``k=v,k2=v2`` → dict; segments trimmed, empty ones skipped, AND semantics."""
    if not raw:
        return {}
    labels: dict[str, str] = {}
    for segment in raw.split(","):
        segment = segment.strip()
        if not segment:
            continue
        key, sep, value = segment.partition("=")
        if not sep:
            raise invalid(f'invalid labels filter segment "{segment[:40]}": expected key=value')
        labels[key.strip()] = value.strip()
    return validate_labels(labels)


LISTED_STATUSES = tuple(status.value for status in Status if status is not Status.DELETED)


def parse_status_filter(raw: str | None) -> tuple[str, ...]:
    """``running,paused`` → the statuses a listed sandbox may have (any may match); empty:
    no filter. Deleted sandboxes are never listed."""
    wanted = tuple(dict.fromkeys(part.strip() for part in (raw or "").split(",") if part.strip()))
    unknown = [status for status in wanted if status not in LISTED_STATUSES]
    if unknown:
        raise invalid(
            f'invalid status filter "{unknown[0][:40]}"',
            f"one or more of {', '.join(LISTED_STATUSES)}, comma-separated",
        )
    return wanted


def page_and_limit(page: str | None, limit: str | None) -> tuple[int, int]:
    """Lenient like the reference: junk or out-of-range values fall back, never 400."""

    def number(raw: str | None) -> int | None:
        try:
            return int(raw) if raw is not None else None
        except ValueError:
            return None

    page_number = number(page)
    size = number(limit)
    page_number = page_number if page_number and page_number >= 1 else 1
    size = 20 if not size or size <= 0 else min(size, 100)
    return page_number, size


def command_text(command: str | None) -> str:
    """A command to run: trimmed, required, at most ``MAX_COMMAND_CHARS``."""
    text = (command or "").strip()
    if not text:
        raise InvalidInputError("Command is required")
    if len(text) > MAX_COMMAND_CHARS:
        raise InvalidInputError("Command too long", f"at most {MAX_COMMAND_CHARS} characters")
    return text


def command_env(env: dict[str, str] | None) -> dict[str, str]:
    """Variables for one command: names without ``=`` or NUL, values without NUL."""
    for key, value in (env or {}).items():
        if not key or "=" in key or "\x00" in key or "\x00" in value:
            raise InvalidInputError("Invalid env", f"bad variable {key[:40]!r}")
    return dict(env or {})


def command_cwd(cwd: str | None, *, absolute: bool) -> str | None:
    """A working directory (None: the agent's default); background commands need it absolute."""
    if not cwd:
        return None
    if len(cwd) > MAX_PATH_CHARS or "\x00" in cwd:
        raise InvalidInputError("Invalid cwd", "must be an absolute path" if absolute else None)
    if absolute and not cwd.startswith("/"):
        raise InvalidInputError("Invalid cwd", "must be an absolute path")
    return cwd
