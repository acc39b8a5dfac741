"""Streaming halves of the files API: upload bodies, download responses, the watch WebSocket.

Upload: the request body is read chunk by chunk and forwarded to the agent as it arrives; the
agent connection's flow control (one 1 MiB window per request) stops us reading while the
sandbox disk catches up, and uvicorn then stops reading the socket, so a 1 GB upload costs the
server about a window of memory. Only multipart bodies are buffered, and those are capped at
5 MB (413 beyond, CONTRACT §C.12). When the upload fails early (full disk, unknown sandbox) the
rest of the body is read and discarded before answering, so clients that send the whole body
before reading the response still get the JSON error instead of a reset connection.

Download: the agent's stream goes out as it arrives, with ``Content-Length`` from its ``head``;
the route's ``StreamOwner`` (``api/streams.py``) holds the file open until the response ends.

Watch: events are forwarded one per text frame. A slow client is backpressure, not a buffer:
we read the next event only after the previous frame was handed to the socket, so at most one
agent window is in flight; past that the agent holds a bounded queue and then the kernel's
inotify queue (which drops with an overflow, see ``agent/watch.py``). A client that stops
reading entirely is closed with 1008 once a single send has been stuck for
``SEND_STALL_LIMIT``. Close codes: 1000 the watched path went away, 1008 too slow, 1011 the
sandbox agent failed or the sandbox stopped.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import AsyncIterator
from email.message import Message
from typing import Any
from urllib.parse import quote

import anyio
from fastapi import Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..agentclient import AgentError
from ..errors import InvalidInputError, PayloadTooLargeError, VoidRunError
from ..schemas.files import Uploaded
from ..services.accounts import Principal
from ..services.agents import agent_text as text
from ..services.file_args import file_target
from ..services.files import Download, FileService
from .streams import StreamOwner

MULTIPART_LIMIT = 5 * 1024 * 1024
SEND_STALL_LIMIT = 60.0
CLOSE_LIMIT = 5.0
NORMAL, TOO_SLOW, FAILED = 1000, 1008, 1011
EVENT_KEYS = ("type", "path", "oldPath", "size", "timestamp")

UPLOAD_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
        },
    }
}


# -- upload ------------------------------------------------------------------------------------


async def receive_upload(
    request: Request, files: FileService, caller: Principal, sandbox_id: str, path: str | None
) -> Uploaded:
    target = file_target(path)  # before any byte of the body is read
    chunks = request.stream()
    try:
        content_type = request.headers.get("content-type", "")
        if content_type.lower().startswith("multipart/form-data"):
            data = multipart_file(await _read_limited(chunks), content_type)
            size = await files.upload(caller, sandbox_id, target, _one(data))
        else:
            size = await files.upload(caller, sandbox_id, target, chunks)
    except ClientDisconnect:
        raise InvalidInputError("Upload aborted", "the client disconnected") from None
    except VoidRunError:
        await _drain(chunks)
        raise
    return Uploaded(path=target, size=size)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _read_limited(chunks: AsyncIterator[bytes]) -> bytes:
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > MULTIPART_LIMIT + 64 * 1024:  # room for the part headers
            raise PayloadTooLargeError(
                "Multipart upload too large", "at most 5 MB; send larger files as a raw body"
            )
    return bytes(body)


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    try:
        async for _ in chunks:
            pass
    except Exception:  # noqa: BLE001 - a disconnect or a consumed stream: nothing left to read
        pass


def multipart_file(body: bytes, content_type: str) -> bytes:
    """The ``file`` field of a multipart/form-data body (bodies here are ≤5 MB)."""
    header = Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise InvalidInputError("Invalid multipart body", "no boundary in Content-Type")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    for part in (b"\r\n" + body).split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        head, found, content = part.partition(b"\r\n\r\n")
        if not found:
            continue
        disposition = Message()
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-disposition":
                disposition["content-disposition"] = value.strip()
        if disposition.get_param("name", header="content-disposition") == "file":
            return content
    raise InvalidInputError("Invalid multipart body", "no 'file' field")


# -- download ----------------------------------------------------------------------------------


def content_disposition(path: str) -> str:
    """``attachment; filename="…"``, plus RFC 5987 ``filename*`` when the name is not ASCII."""
    name = posixpath.basename(path) or "download"
    fallback = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "_" for c in name)
    if fallback == name:
        return f'attachment; filename="{name}"'
    encoded = quote(name.encode("utf-8", "surrogateescape"), safe="")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def download_response(owner: StreamOwner, caller: Principal, download: Download) -> Response:
    """The file's bytes as they arrive; ``owner`` holds the file open until the response ends.
    A revoked key cuts the body short (its length was promised in ``Content-Length``)."""
    headers = {
        "Content-Disposition": content_disposition(download.path),
        "Content-Length": str(download.size),
    }
    return owner.respond(
        download.chunks,
        caller,
        final=None,
        media_type="application/octet-stream",
        headers=headers,
    )


# -- watch -------------------------------------------------------------------------------------


def public_event(event: dict[str, Any]) -> str:
    clean = {k: text(event[k]) for k in EVENT_KEYS if isinstance(event.get(k), str)}
    if isinstance(event.get("size"), int):
        clean["size"] = event["size"]
    return json.dumps(clean, ensure_ascii=False, separators=(",", ":"))


async def forward_watch(websocket: WebSocket, events: AsyncIterator[dict[str, Any]]) -> None:
    """Accept, forward the watch's events until one side ends, then close with the reason."""
    await websocket.accept()
    code, reason = NORMAL, "client left"
    async with anyio.create_task_group() as tasks:

        async def discard_input() -> None:
            try:
                while (await websocket.receive())["type"] != "websocket.disconnect":
                    pass
            except (WebSocketDisconnect, RuntimeError, OSError):
                pass
            tasks.cancel_scope.cancel()

        tasks.start_soon(discard_input)
        code, reason = await _forward(websocket, events)
        tasks.cancel_scope.cancel()
    with anyio.move_on_after(CLOSE_LIMIT, shield=True):
        try:
            await websocket.close(code, reason)
        except (RuntimeError, OSError):
            pass  # the client already closed it


async def _forward(websocket: WebSocket, events: AsyncIterator[dict[str, Any]]) -> tuple[int, str]:
    try:
        async for event in events:
            with anyio.move_on_after(SEND_STALL_LIMIT) as stalled:
                await websocket.send_text(public_event(event))
            if stalled.cancelled_caught:
                return TOO_SLOW, "client too slow"
    except AgentError:
        return FAILED, "sandbox agent unavailable"
    except (WebSocketDisconnect, RuntimeError, OSError):
        return NORMAL, "client left"
    return NORMAL, "watched path removed"
