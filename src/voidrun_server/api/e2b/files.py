"""envd's plain HTTP routes: ``GET /health``, ``GET /files`` (a file, streamed) and
``POST /files`` (``application/octet-stream``, optionally gzip, streamed to the agent; or
``multipart/form-data`` with one ``file`` part per file, its filename the path)."""

from __future__ import annotations

import posixpath
import urllib.parse
import zlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from ...errors import InvalidInputError
from ...services.e2b_files import Entry
from .calls import Call
from .errors import rest_error, rest_of
from .multipart import MultipartReader, boundary_of

CHUNK = 256 * 1024
MAX_FILES = 100


def _write_info(entry: Entry) -> dict[str, Any]:
    return {
        "name": entry.name,
        "type": "dir" if entry.kind == "dir" else "file",
        "path": entry.path,
    }


async def health(scope: Scope, receive: Receive, send: Send) -> None:
    await Response(status_code=204)(scope, receive, send)


async def files(call: Call, scope: Scope, receive: Receive, send: Send) -> None:
    request = Request(scope, receive)
    started = False

    async def sending(message: Message) -> None:
        nonlocal started
        started = True
        await send(message)

    try:
        if request.method == "GET":
            await _download(call, request, scope, receive, sending)
            return
        if request.method != "POST":
            await rest_error(405, "use GET or POST")(scope, receive, send)
            return
        written = await _upload(call, request)
    except Exception as exc:
        if started:
            raise  # half a response: the server closes the connection
        await rest_of(exc)(scope, receive, send)
        return
    await JSONResponse([_write_info(e) for e in written])(scope, receive, send)


async def _download(
    call: Call, request: Request, scope: Scope, receive: Receive, send: Send
) -> None:
    raw = request.query_params.get("path", "")
    path = await call.files.absolute(call.caller, call.sandbox_id, raw, call.user)
    async with call.files.download(call.caller, call.sandbox_id, path) as opened:
        name = urllib.parse.quote(posixpath.basename(opened.path) or "file")
        headers = {
            "content-length": str(opened.size),
            "content-disposition": f"attachment; filename*=UTF-8''{name}",
        }
        response = StreamingResponse(
            opened.chunks, media_type="application/octet-stream", headers=headers
        )
        await response(scope, receive, send)


async def _upload(call: Call, request: Request) -> list[Entry]:
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    query_path = request.query_params.get("path", "")
    if kind == "multipart/form-data":
        return await _multipart(call, request, query_path)
    if not query_path:
        raise InvalidInputError("path is required")
    path = await call.files.absolute(call.caller, call.sandbox_id, query_path, call.user)
    body: AsyncIterator[bytes] = request.stream()
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding == "gzip":
        body = _gunzip(body)
    elif encoding not in ("", "identity"):
        raise InvalidInputError("Unsupported Content-Encoding", "gzip or identity")
    return [await call.files.upload(call.caller, call.sandbox_id, path, body)]


async def _multipart(call: Call, request: Request, query_path: str) -> list[Entry]:
    """One ``file`` part per file, streamed to the agent as it arrives; a part's filename is
    its path (``path`` in the query names a lone file's instead)."""
    boundary = boundary_of(request.headers.get("content-type", ""))
    reader = MultipartReader(request.stream(), boundary)
    written: list[Entry] = []
    while (part := await reader.next_part()) is not None:
        if part.filename is None:
            continue  # a plain form field: envd takes files only
        if len(written) >= MAX_FILES:
            raise InvalidInputError("Too many files", f"at most {MAX_FILES} per request")
        raw = query_path or part.filename
        path = await call.files.absolute(call.caller, call.sandbox_id, raw, call.user)
        written.append(await call.files.upload(call.caller, call.sandbox_id, path, reader.body()))
    if not written:
        raise InvalidInputError("no file in the form", "send a 'file' part per file")
    return written


async def _gunzip(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Inflated as it arrives, in bounded pieces; what it may grow to is bounded by the
    sandbox's disk (a full disk is a 507), as for any upload."""
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    async for chunk in chunks:
        try:
            out = inflate.decompress(chunk, CHUNK * 4)
            while out:
                yield out
                out = inflate.decompress(inflate.unconsumed_tail, CHUNK * 4)
        except zlib.error as exc:
            raise InvalidInputError("Invalid gzip body", str(exc)) from exc
    tail = inflate.flush()
    if tail:
        yield tail
