"""Usage samples and the event history of a sandbox (the dashboard's charts and timeline)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from .common import WireModel


class SandboxMetrics(WireModel):
    status: str
    sampled_at: datetime
    cpu_usage_ns: int | None = Field(None, description="CPU time used since start (cgroup).")
    memory_bytes: int | None = None
    memory_limit_bytes: int | None = None
    pids: int | None = None
    oom_kills: int | None = Field(None, description="Processes OOM-killed since start.")
    rx_bytes: int | None = Field(None, description="Bytes received over the sandbox network.")
    tx_bytes: int | None = None
    disk_limit_mb: int | None = None
    last_activity_at: datetime | None = Field(
        None, description="The last data-plane call (exec, files, terminals…): idle since then."
    )


class SandboxEvent(WireModel):
    id: int
    kind: str = Field(description="e.g. sandbox.create, sandbox.paused, sandbox.died.")
    data: dict[str, Any]
    created_at: datetime


class SandboxEvents(WireModel):
    status: str = "success"
    message: str
    data: list[SandboxEvent]


class SandboxMetricsSingle(WireModel):
    status: str = "success"
    message: str
    data: SandboxMetrics
