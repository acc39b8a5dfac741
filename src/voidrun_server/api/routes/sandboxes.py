"""Sandbox CRUD and lifecycle (CONTRACT §A.4)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from ...config import StatusDialect
from ...schemas.common import MessageEnvelope, envelope
from ...schemas.sandboxes import (
    NetworkSpec,
    NetworkUsagePublic,
    PortSpec,
    SandboxCreate,
    SandboxList,
    SandboxPublic,
    SandboxSingle,
    SandboxUpdate,
)
from ...services import validation
from ...services.lifecycle import Status, Verb, present
from ...services.networking import NetworkUsage
from ...services.sandboxes import SandboxRow, SandboxService
from ..deps import Caller, Ctx

router = APIRouter(prefix="/api/sandboxes", tags=["Sandboxes"])
SDK_USER_AGENTS = ("voidrun-python-sdk/",)  # CONTRACT decision 1


async def sdk_dialect(request: Request, ctx: Ctx) -> bool:
    """Whether this caller must see ``snapshotted`` instead of ``paused``/``stopped``."""
    dialect = ctx.settings.status_dialect
    if dialect is StatusDialect.AUTO:
        return request.headers.get("user-agent", "").lower().startswith(SDK_USER_AGENTS)
    return dialect is StatusDialect.SDK


async def service(ctx: Ctx) -> SandboxService:
    return ctx.sandbox_service()


Sdk = Annotated[bool, Depends(sdk_dialect)]
Service = Annotated[SandboxService, Depends(service)]


def public(
    row: SandboxRow, sdk: bool, usage: NetworkUsage | None = None, *, node: bool = False
) -> SandboxPublic:
    """``node``: emit ``nodeId`` (VOIDRUN_EMIT_NODE_ID; never by default, see CONTRACT C.11)."""
    ports = [PortSpec.model_validate(p) for p in row.ports]
    return SandboxPublic(
        id=row.id,
        name=row.name,
        image=row.image,
        cpu=row.cpu,
        mem=row.mem,
        disk_mb=row.disk_mb,
        status=present(row.status, sdk),
        created_at=row.created_at,
        created_by=row.created_by,
        org_id=row.org_id,
        env_vars=row.env_vars or None,
        auto_sleep=row.auto_sleep,
        region=row.region or None,
        ref_id=row.ref_id or None,
        labels=row.labels or None,
        ports=ports or None,
        publish_ports=[p.port for p in ports] or None,
        updated_at=row.updated_at,
        error=(row.error or None) if row.status in (Status.ERROR, Status.KILLED) else None,
        network=NetworkSpec.model_validate(row.network) if row.network else None,
        network_usage=NetworkUsagePublic(rx_bytes=usage.rx_bytes, tx_bytes=usage.tx_bytes)
        if usage
        else None,
        isolation=row.isolation,
        last_activity_at=row.last_activity_at,
        node_id=(row.node_id or None) if node else None,
    )


@router.get("", response_model=SandboxList, response_model_exclude_none=True)
async def list_sandboxes(
    caller: Caller,
    sandboxes: Service,
    sdk: Sdk,
    page: Annotated[str | None, Query(description="Page number, from 1.")] = None,
    limit: Annotated[str | None, Query(description="Page size 1..100, default 20.")] = None,
    labels: Annotated[str | None, Query(description="k=v[,k=v…], all must match.")] = None,
    status: Annotated[
        str | None,
        Query(description="status[,status…] (running, paused, stopped, error, killed): any."),
    ] = None,
) -> SandboxList:
    page_number, size = validation.page_and_limit(page, limit)
    rows, total = await sandboxes.list(
        caller,
        page_number,
        size,
        validation.parse_label_filter(labels),
        validation.parse_status_filter(status),
    )
    return SandboxList(
        message="Sandboxes fetched",
        data=[public(row, sdk, node=sandboxes.settings.emit_node_id) for row in rows],
        meta={"page": page_number, "limit": size, "total": total, "totalPages": -(-total // size)},
    )


@router.post("", status_code=201, response_model_exclude_none=True)
async def create_sandbox(
    body: SandboxCreate, caller: Caller, sandboxes: Service, sdk: Sdk
) -> dict[str, Any]:
    row = await sandboxes.create(caller, body)
    node = sandboxes.settings.emit_node_id
    data = public(row, sdk, node=node).model_dump(mode="json", by_alias=True, exclude_none=True)
    return envelope("Sandbox created", data)


@router.get("/{sandbox_id}", response_model=SandboxSingle, response_model_exclude_none=True)
async def get_sandbox(
    sandbox_id: str, caller: Caller, sandboxes: Service, sdk: Sdk
) -> SandboxSingle:
    row = await sandboxes.get(caller, sandbox_id)
    usage = await sandboxes.network_usage(row)
    return SandboxSingle(
        message="Sandbox details fetched",
        data=public(row, sdk, usage, node=sandboxes.settings.emit_node_id),
    )


@router.patch("/{sandbox_id}", response_model=SandboxSingle, response_model_exclude_none=True)
async def update_sandbox(
    sandbox_id: str, body: SandboxUpdate, caller: Caller, sandboxes: Service, sdk: Sdk
) -> SandboxSingle:
    row = await sandboxes.update(caller, sandbox_id, body.auto_sleep, body.network, body.ports)
    node = sandboxes.settings.emit_node_id
    return SandboxSingle(message="Sandbox updated", data=public(row, sdk, node=node))


@router.delete("/{sandbox_id}", response_model=MessageEnvelope)
async def delete_sandbox(sandbox_id: str, caller: Caller, sandboxes: Service) -> dict[str, Any]:
    await sandboxes.delete(caller, sandbox_id)
    return envelope("Sandbox deleted")


def _verb_route(verb: Verb) -> None:
    async def apply(
        sandbox_id: str, caller: Caller, sandboxes: Service, sdk: Sdk
    ) -> dict[str, Any]:
        return envelope(await sandboxes.apply_verb(caller, sandbox_id, verb, sdk))

    apply.__name__ = f"{verb}_sandbox"
    router.add_api_route(
        f"/{{sandbox_id}}/{verb}",
        apply,
        methods=["POST"],
        response_model=MessageEnvelope,
        summary=f"{verb.capitalize()} a sandbox",
    )


for _verb in (Verb.START, Verb.STOP, Verb.PAUSE, Verb.RESUME, Verb.SLEEP, Verb.WAKE):
    _verb_route(_verb)
