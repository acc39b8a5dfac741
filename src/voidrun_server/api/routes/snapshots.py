"""Snapshots and forks of a sandbox (extensions; ``services/snapshots.py``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from ...schemas.images import ForkCreate, SnapshotCreate
from ...schemas.sandboxes import ImagePublic, SandboxFork
from ...services.snapshots import Snapshots
from ..deps import Caller, Ctx
from .sandboxes import Sdk, public

router = APIRouter(prefix="/api/sandboxes", tags=["Sandboxes"])


async def snapshots(ctx: Ctx) -> Snapshots:
    return Snapshots(ctx.sandbox_service())


Service = Annotated[Snapshots, Depends(snapshots)]


@router.post("/{sandbox_id}/snapshot", response_model=ImagePublic, status_code=201)
async def snapshot_sandbox(
    sandbox_id: str, body: SnapshotCreate, caller: Caller, service: Service
) -> ImagePublic:
    """Save the sandbox's current root as a new image of the org (extension): ``ready`` when
    this answers. A running sandbox is frozen for the copy and keeps running after it; create
    sandboxes from the image with ``"image": "name:version"``."""
    row = await service.snapshot(caller, sandbox_id, body.name, body.version)
    return ImagePublic.model_validate(row)


@router.post("/{sandbox_id}/fork", response_model=SandboxFork, status_code=201)
async def fork_sandbox(
    sandbox_id: str, body: ForkCreate, caller: Caller, service: Service, sdk: Sdk
) -> SandboxFork:
    """Create ``count`` (1..20) running sandboxes from a snapshot of this one (extension). All
    or nothing: over quota is 403 before anything is made; if a create fails, the sandboxes
    already made and the snapshot are deleted again."""
    image, rows = await service.fork(caller, sandbox_id, body.count)
    return SandboxFork(
        message=f"Sandbox forked {len(rows)} time(s)",
        data=[public(row, sdk) for row in rows],
        image=ImagePublic.model_validate(image),
    )
