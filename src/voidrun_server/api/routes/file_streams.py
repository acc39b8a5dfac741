"""Streaming File System routes: upload, download and the watch session + WebSocket.

Shared dependencies of all file routes live here too; ``files.py`` includes this router, so
both appear under the File System tag with their public paths. The streaming mechanics
(backpressure, multipart, close codes) are in ``api/file_transfer.py``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, WebSocket
from fastapi.responses import Response
from starlette.requests import HTTPConnection

from ...schemas.files import (
    UploadEnvelope,
    WatchEnvelope,
    WatchRequest,
    WatchStarted,
)
from ...services.file_watches import WatchTickets, tickets_for
from ...services.files import FileService
from .. import file_transfer as transfer
from ..deps import Caller, Ctx
from ..streams import Owner

router = APIRouter()


async def watch_registry(connection: HTTPConnection) -> WatchTickets:
    state = connection.app.state
    registry: WatchTickets | None = getattr(state, "file_watches", None)
    if registry is None:
        ctx = state.ctx
        registry = state.file_watches = tickets_for(ctx.settings, ctx.sessions)
    return registry


Watches = Annotated[WatchTickets, Depends(watch_registry)]


async def file_service(ctx: Ctx, watches: Watches) -> FileService:
    return FileService(ctx.sandbox_service(), watches)


Files = Annotated[FileService, Depends(file_service)]
PathQuery = Annotated[str | None, Query(description="Absolute path in the sandbox.")]


@router.post(
    "/{sandbox_id}/files/upload",
    response_model=UploadEnvelope,
    openapi_extra=transfer.UPLOAD_BODY_DOC,
)
async def upload_file(
    sandbox_id: str, request: Request, caller: Caller, files: Files, path: PathQuery = None
) -> UploadEnvelope:
    """Raw body (any content type) or multipart field ``file`` (≤5 MB); atomic, parents made."""
    uploaded = await transfer.receive_upload(request, files, caller, sandbox_id, path)
    return UploadEnvelope(message="File uploaded", data=uploaded)


@router.get(
    "/{sandbox_id}/files/download",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def download_file(
    sandbox_id: str, caller: Caller, files: Files, owner: Owner, path: PathQuery = None
) -> Response:
    """The file's bytes, streamed, with ``Content-Length`` and an attachment file name."""
    download = await owner.enter(files.download(caller, sandbox_id, path))
    return transfer.download_response(owner, caller, download)


@router.post("/{sandbox_id}/files/watch", response_model=WatchEnvelope)
async def start_watch(
    sandbox_id: str, body: WatchRequest, caller: Caller, files: Files
) -> WatchEnvelope:
    """Returns a session id; events stream on the WebSocket ``…/watch/{sessionId}/stream``."""
    session_id = await files.start_watch(caller, sandbox_id, body)
    return WatchEnvelope(message="watch started", data=WatchStarted(session_id=session_id))


@router.websocket("/{sandbox_id}/files/watch/{session_id}/stream")
async def watch_stream(
    websocket: WebSocket,
    sandbox_id: str,
    session_id: str,
    caller: Caller,
    files: Files,
    owner: Owner,
) -> None:
    """One JSON FileEvent per text frame; client frames are read and discarded."""
    ticket = await files.claim_watch(session_id, caller, sandbox_id)
    async with owner.revocable(websocket, caller):
        events = await owner.enter(files.watch(caller, ticket))
        await transfer.forward_watch(websocket, events)
