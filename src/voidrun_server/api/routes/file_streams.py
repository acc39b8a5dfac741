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

from ...errors import InvalidInputError
from ...schemas.files import (
    Uploaded,
    UploadEnvelope,
    WatchEnvelope,
    WatchRequest,
    WatchStarted,
)
from ...services.file_watches import WatchRegistry, WatchTicket
from ...services.files import FileService, clean_path
from .. import file_transfer as transfer
from ..deps import Caller, Ctx
from ..streams import Streams, revocable

router = APIRouter()


async def file_service(ctx: Ctx) -> FileService:
    return FileService(ctx.sandbox_service())


async def watch_registry(connection: HTTPConnection) -> WatchRegistry:
    state = connection.app.state
    registry: WatchRegistry | None = getattr(state, "file_watches", None)
    if registry is None:
        registry = state.file_watches = WatchRegistry()
    return registry


Files = Annotated[FileService, Depends(file_service)]
Watches = Annotated[WatchRegistry, Depends(watch_registry)]
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
    target = clean_path(path)
    if target == "/":
        raise InvalidInputError("Invalid path", "path must name a file")
    size = await transfer.receive_upload(request, files, caller, sandbox_id, target)
    return UploadEnvelope(message="File uploaded", data=Uploaded(path=target, size=size))


@router.get(
    "/{sandbox_id}/files/download",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def download_file(
    sandbox_id: str, caller: Caller, files: Files, path: PathQuery = None
) -> Response:
    """The file's bytes, streamed, with ``Content-Length`` and an attachment file name."""
    target = clean_path(path)
    download = await files.open_download(caller, sandbox_id, target)
    return transfer.download_response(download, target)


@router.post("/{sandbox_id}/files/watch", response_model=WatchEnvelope)
async def start_watch(
    sandbox_id: str, body: WatchRequest, caller: Caller, files: Files, watches: Watches
) -> WatchEnvelope:
    """Returns a session id; events stream on the WebSocket ``…/watch/{sessionId}/stream``."""
    path = clean_path(body.path)
    await files.path_exists(caller, sandbox_id, path)
    ticket = WatchTicket(
        org_id=caller.org_id,
        sandbox_id=sandbox_id,
        path=path,
        recursive=body.recursive is True,
        ignore_hidden=body.ignore_hidden is not False,
    )
    session_id = watches.add(ticket)
    return WatchEnvelope(message="watch started", data=WatchStarted(session_id=session_id))


@router.websocket("/{sandbox_id}/files/watch/{session_id}/stream")
async def watch_stream(
    websocket: WebSocket,
    sandbox_id: str,
    session_id: str,
    caller: Caller,
    files: Files,
    watches: Watches,
    streams: Streams,
) -> None:
    """One JSON FileEvent per text frame; client frames are read and discarded."""
    ticket = watches.claim(session_id, caller, sandbox_id)
    async with revocable(websocket, streams, caller):
        await transfer.stream_watch(websocket, files, caller, ticket)
