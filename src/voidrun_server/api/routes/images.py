"""Images visible to the caller's org (CONTRACT §A.7): bare objects and arrays; plus imports
(``POST``, ``DELETE``, the build's SSE log), which are extensions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, StreamingResponse

from ...schemas.common import envelope
from ...schemas.images import ImageCreate
from ...schemas.sandboxes import ImagePublic
from ...services import images
from ...services.build_log import BuildLog
from ...services.image_builds import ImageBuilds
from ...services.images import ImageRow
from ..deps import Caller, Ctx, Db
from ..sse import SSE_HEADERS, event, json_event
from ..streams import REVOKED_REASON, Owner

router = APIRouter(prefix="/api/images", tags=["Images"])
LOG_TAIL = 50
HEARTBEAT = 15.0


async def image_builds(ctx: Ctx) -> ImageBuilds:
    return ctx.image_builds()


Builds = Annotated[ImageBuilds, Depends(image_builds)]


def _public(row: ImageRow, builds: ImageBuilds | None, *, with_log: bool = False) -> ImagePublic:
    image = ImagePublic.model_validate(row)
    build = builds.logs.get(row.id) if builds is not None else None
    if build is not None and row.status == "building":
        image.progress = build.progress
    if with_log and build is not None:
        image.log = list(build.lines)[-LOG_TAIL:]
    return image


@router.get("", response_model=list[ImagePublic])
async def list_images(caller: Caller, session: Db, ctx: Ctx) -> list[ImagePublic]:
    return [_public(i, ctx.images) for i in await images.visible(session, caller.org_id)]


@router.post("", response_model=ImagePublic, status_code=202)
async def import_image(body: ImageCreate, caller: Caller, builds: Builds) -> ImagePublic:
    """Start importing an image (extension): 202 with ``status: building``; follow it with
    ``GET /api/images/{id}`` or ``GET /api/images/{id}/logs``. The same name and version asked
    for again while it builds returns the same image."""
    return _public(await builds.start(caller, body), builds)


@router.get("/name/{name}", response_model=ImagePublic)
async def image_by_name(name: str, caller: Caller, session: Db, ctx: Ctx) -> ImagePublic:
    return _public(await images.by_name(session, caller.org_id, name), ctx.images)


@router.get("/{image_id}", response_model=ImagePublic)
async def image_by_id(image_id: str, caller: Caller, session: Db, ctx: Ctx) -> ImagePublic:
    row = await images.by_id(session, caller.org_id, image_id)
    return _public(row, ctx.images, with_log=True)


@router.delete("/{image_id}")
async def delete_image(image_id: str, caller: Caller, builds: Builds) -> JSONResponse:
    """Delete one of the org's images and free its disk (extension); 409 while sandboxes
    use it or it is building."""
    await builds.delete(caller, image_id)
    return JSONResponse(envelope("Image deleted"))


@router.get(
    "/{image_id}/logs",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def image_logs(
    image_id: str, caller: Caller, session: Db, ctx: Ctx, owner: Owner
) -> StreamingResponse:
    """The build's log as Server-Sent Events (``log`` events, one per line), followed until the
    build ends, then one ``status`` event ``{"status", "error"}``."""
    row = await images.by_id(session, caller.org_id, image_id)
    build = ctx.images.logs.get(row.id) if ctx.images is not None else None
    placed = ctx.images.placed if ctx.images is not None else None
    status, error = row.status, row.error
    events = (
        _node_log_events(placed.follow(row))
        if build is None and placed is not None and row.node_id and status == "building"
        else _log_events(build, status, error)
    )
    return owner.respond(
        events,
        caller,
        final=json_event("status", {"status": "error", "error": REVOKED_REASON}),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
    )


async def _node_log_events(
    batches: AsyncIterator[tuple[list[str], str, str | None]],
) -> AsyncIterator[bytes]:
    """The same events for a build on a node (``services/placed_builds.py``)."""
    async for lines, status, error in batches:
        for line in lines:
            yield event("log", line)
        if status != "building":
            yield json_event("status", {"status": status, "error": error})
            return
        if not lines:
            yield b": keep-alive\n\n"


async def _log_events(
    build: BuildLog | None, status: str, error: str | None
) -> AsyncIterator[bytes]:
    if build is None:  # built by an earlier run of the server: only its outcome is known
        if status == "building":
            status, error = "error", "the build's log is not on this server"
        yield json_event("status", {"status": status, "error": error})
        return
    position = 0
    while True:
        changed = build.changed
        lines, position = build.since(position)
        for line in lines:
            yield event("log", line)
        if build.status != "building":
            yield json_event("status", {"status": build.status, "error": build.error})
            return
        with anyio.move_on_after(HEARTBEAT):
            await changed.wait()
        if changed is build.changed:  # nothing new: keep proxies from closing the stream
            yield b": keep-alive\n\n"
