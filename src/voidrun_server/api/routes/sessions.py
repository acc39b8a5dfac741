"""Persistent shell sessions: ``/session-exec`` and ``/session-exec-stream`` (CONTRACT §B.3, §B.4).

A session is one long-lived shell in the sandbox; ``exec`` runs a command in it and returns only
that command's output and exit code, while cwd, exported variables and functions persist.
Every failure, request-shape or agent-reported, is a 400 with ``{"error": ...}``.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from ...agentclient import AgentError
from ...schemas.processes import SessionExecRequest, SessionExecResponse, SessionExecStreamRequest
from ...services.commands import LiveStream
from ...services.pty import DEFAULT_SESSION_TIMEOUT, ShellService, session_id
from ...services.validation import command_text
from ..deps import Caller, Ctx
from ..streams import REVOKED_REASON, Owner

router = APIRouter(prefix="/api/sandboxes", tags=["Execution"])
NDJSON_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
NDJSON_DOC: dict[int | str, dict[str, Any]] = {200: {"content": {"application/x-ndjson": {}}}}


async def shell_service(ctx: Ctx) -> ShellService:
    return ShellService(ctx.sandbox_service())


Shells = Annotated[ShellService, Depends(shell_service)]


def text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", errors="replace")


@router.post(
    "/{sandbox_id}/session-exec",
    response_model=SessionExecResponse,
    response_model_exclude_none=True,
)
async def session_exec(
    sandbox_id: str, body: SessionExecRequest, caller: Caller, service: Shells
) -> SessionExecResponse:
    """``create`` / ``exec`` / ``input`` / ``resize`` / ``close`` a persistent shell session."""
    outcome = await service.act(caller, sandbox_id, body)
    return SessionExecResponse(
        session_id=outcome.session_id,
        output=text(outcome.output),
        exit_code=outcome.exit_code,
        error=outcome.error,
    )


def ndjson(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode() + b"\n"


@router.post(
    "/{sandbox_id}/session-exec-stream", response_class=StreamingResponse, responses=NDJSON_DOC
)
async def session_exec_stream(
    sandbox_id: str,
    body: SessionExecStreamRequest,
    caller: Caller,
    service: Shells,
    request: Request,
    owner: Owner,
) -> StreamingResponse:
    """NDJSON: ``{"type":"stdout","data":…}`` lines as output comes, then
    ``{"type":"exit","exitCode":N}`` (or ``{"type":"error","error":…}``).

    Served as ``application/x-ndjson``, except to the official Python SDK: its generated client
    asks for that type but can only parse JSON and ``text/*`` bodies, so it gets the same lines
    as ``text/plain`` (recognised by its User-Agent, as for the status dialect)."""
    sid = session_id(body.session_id)
    assert sid is not None
    command = command_text(body.command)
    limit = body.timeout or DEFAULT_SESSION_TIMEOUT
    live = await owner.enter(service.stream(caller, sandbox_id, sid, command, limit))  # JSON 400
    return owner.respond(
        session_lines(live, limit),
        caller,
        final=ndjson({"type": "error", "error": REVOKED_REASON}),
        media_type=ndjson_media_type(request),
        headers=NDJSON_HEADERS,
    )


async def session_lines(live: LiveStream, limit: int) -> AsyncIterator[bytes]:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    try:
        async for chunk in live.chunks():
            if chunk is None:
                continue  # quiet; NDJSON has no comment lines
            data = decoder.decode(chunk.data)
            if data:
                yield ndjson({"type": "stdout", "data": data})
    except AgentError as exc:
        yield ndjson({"type": "error", "error": str(exc)})
        return
    rest = decoder.decode(b"", final=True)
    if rest:
        yield ndjson({"type": "stdout", "data": rest})
    result = live.result
    exit_line: dict[str, Any] = {"type": "exit", "exitCode": result.get("exitCode", -1)}
    if result.get("timedOut"):
        exit_line["error"] = f"command still running after {limit}s"
    yield ndjson(exit_line)


def ndjson_media_type(request: Request) -> str:
    if request.headers.get("user-agent", "").startswith("VoidRun-Python-SDK/"):
        return "text/plain; charset=utf-8"
    return "application/x-ndjson"
