"""A sandbox's live usage and event history (for the dashboard; any API client may call them)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from ...schemas.insights import SandboxEvent, SandboxEvents, SandboxMetrics, SandboxMetricsSingle
from ...services import insights
from ..deps import Caller
from .sandboxes import Service

Limit = Annotated[int, Query(ge=1, le=500, description="At most this many, newest first.")]
router = APIRouter(prefix="/api/sandboxes", tags=["Sandboxes"])


@router.get("/{sandbox_id}/metrics", response_model=SandboxMetricsSingle)
async def sandbox_metrics(
    sandbox_id: str, caller: Caller, sandboxes: Service
) -> SandboxMetricsSingle:
    """One sample of the sandbox's cgroup and network accounting; figures are null when the
    sandbox is not running or its runtime does not expose them. Poll it for a chart."""
    sample = await insights.usage(sandboxes, caller, sandbox_id)
    data = SandboxMetrics.model_validate(sample, from_attributes=True)
    return SandboxMetricsSingle(message="Sandbox metrics fetched", data=data)


@router.get("/{sandbox_id}/events", response_model=SandboxEvents)
async def sandbox_events(
    sandbox_id: str,
    caller: Caller,
    sandboxes: Service,
    limit: Limit = 100,
) -> SandboxEvents:
    """The sandbox's audit trail: created, paused (by auto-sleep or a caller), resumed, died…"""
    rows = await insights.events(sandboxes, caller, sandbox_id, limit)
    return SandboxEvents(
        message="Sandbox events fetched",
        data=[SandboxEvent.model_validate(r, from_attributes=True) for r in rows],
    )
