"""JSON forms of what crosses the internal API between an API replica and a node daemon:
specs, infos, stats, policies, and driver errors (by class, so the replica raises the same
one the node's driver did)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    SandboxUnavailableError,
    ServiceUnavailableError,
    VoidRunError,
)
from ..base import (
    DriverError,
    DriverTimeoutError,
    DriverUnavailableError,
    NetworkPolicy,
    NetworkUsage,
    PortClosedError,
    SandboxInfo,
    SandboxNotFoundError,
    SandboxSpec,
    SandboxState,
    SandboxStateError,
    SandboxStats,
    UnsupportedByDriverError,
)

TOKEN_HEADER = "X-VoidRun-Node-Token"
PREFIX = "/internal/v1"

ERRORS: dict[str, type[DriverError]] = {
    cls.__name__: cls
    for cls in (
        DriverError,
        SandboxNotFoundError,
        SandboxStateError,
        DriverUnavailableError,
        DriverTimeoutError,
        UnsupportedByDriverError,
        PortClosedError,
    )
}


def object_from_json(raw: bytes) -> dict[str, Any]:
    """An internal request's body: a JSON object (empty: ``{}``); ValueError otherwise."""
    data = json.loads(raw or b"{}")
    if not isinstance(data, dict):
        raise ValueError("body must be an object")
    return data


def spec_to_wire(spec: SandboxSpec) -> dict[str, Any]:
    return {
        "sandboxId": spec.sandbox_id,
        "hostname": spec.hostname,
        "rootfs": str(spec.rootfs),
        "cpu": spec.cpu,
        "memMb": spec.mem_mb,
        "diskMb": spec.disk_mb,
        "env": dict(spec.env),
        "network": spec.network.to_wire() if spec.network is not None else None,
        "layers": [str(p) for p in spec.layers],
        "isolation": spec.isolation,
    }


def spec_from_wire(data: dict[str, Any]) -> SandboxSpec:
    network = data.get("network")
    return SandboxSpec(
        sandbox_id=str(data["sandboxId"]),
        hostname=str(data["hostname"]),
        rootfs=Path(data["rootfs"]),
        cpu=int(data["cpu"]),
        mem_mb=int(data["memMb"]),
        disk_mb=int(data["diskMb"]),
        env={str(k): str(v) for k, v in dict(data.get("env") or {}).items()},
        network=NetworkPolicy.from_wire(network) if isinstance(network, dict) else None,
        layers=tuple(Path(p) for p in data.get("layers") or ()),
        isolation=data.get("isolation"),
    )


def info_to_wire(info: SandboxInfo) -> dict[str, Any]:
    return {"state": info.state.value, "pid": info.pid}


def info_from_wire(data: dict[str, Any]) -> tuple[SandboxState, int | None]:
    pid = data.get("pid")
    return SandboxState(data["state"]), int(pid) if pid is not None else None


def stats_to_wire(stats: SandboxStats) -> dict[str, Any]:
    return {
        "memoryBytes": stats.memory_bytes,
        "memoryLimitBytes": stats.memory_limit_bytes,
        "cpuUsageNs": stats.cpu_usage_ns,
        "pids": stats.pids,
        "oomKills": stats.oom_kills,
    }


def stats_from_wire(data: dict[str, Any]) -> SandboxStats:
    return SandboxStats(
        memory_bytes=data.get("memoryBytes"),
        memory_limit_bytes=data.get("memoryLimitBytes"),
        cpu_usage_ns=data.get("cpuUsageNs"),
        pids=data.get("pids"),
        oom_kills=data.get("oomKills"),
    )


def usage_to_wire(usage: NetworkUsage | None) -> dict[str, Any] | None:
    return None if usage is None else {"rx": usage.rx_bytes, "tx": usage.tx_bytes}


def usage_from_wire(data: Any) -> NetworkUsage | None:
    if not isinstance(data, dict):
        return None
    return NetworkUsage(rx_bytes=int(data["rx"]), tx_bytes=int(data["tx"]))


def error_to_wire(exc: DriverError) -> dict[str, Any]:
    kind = next((c.__name__ for c in type(exc).__mro__ if c.__name__ in ERRORS), "DriverError")
    return {
        "kind": kind,
        "message": exc.message,
        "details": exc.details,
        "hint": getattr(exc, "hint", None),
    }


USER_ERRORS: dict[int, type[VoidRunError]] = {
    400: InvalidInputError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    502: SandboxUnavailableError,
}


def user_error_from_wire(status: int, data: dict[str, Any]) -> VoidRunError:
    """A node's ``{"error", "details"}`` answer (``node/images.py``) as the class of the one
    table (``api/errors.py``) its status stands for (503 for any other)."""
    cls = USER_ERRORS.get(status, ServiceUnavailableError)
    details = data.get("details")
    return cls(str(data.get("error") or cls.message), str(details) if details else None)


def error_from_wire(data: dict[str, Any], node_id: str) -> DriverError:
    cls = ERRORS.get(str(data.get("kind")), DriverError)
    message = str(data.get("message") or cls.message)
    details = data.get("details")
    if cls is DriverUnavailableError:
        return DriverUnavailableError(f"node {node_id}: {message}", data.get("hint"))
    return cls(message, str(details) if details is not None else None)
