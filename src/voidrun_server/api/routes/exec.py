"""``/exec`` and ``/exec-stream`` (CONTRACT §A.5, §B.1)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, StreamingResponse

from ...agentclient import AgentError, ExecExit, ExecStream
from ...schemas.exec import ExecData, ExecRequest, ExecResponse
from ...services.exec import ExecService, validate
from ..deps import Caller, Ctx
from ..sse import SSE_HEADERS, LineSplitter, event, json_event
from ..streams import REVOKED_REASON, Owner

router = APIRouter(prefix="/api/sandboxes", tags=["Execution"])


async def exec_service(ctx: Ctx) -> ExecService:
    return ExecService(ctx.settings, ctx.sandbox_service())


Exec = Annotated[ExecService, Depends(exec_service)]


@router.post("/{sandbox_id}/exec", response_model=ExecResponse)
async def run_command(
    sandbox_id: str, body: ExecRequest, caller: Caller, service: Exec
) -> JSONResponse:
    """Run a command and wait for it; a non-zero exit code is still a 200."""
    result = await service.run(caller, sandbox_id, validate(body))
    data = ExecData(
        stdout=result.stdout_text,
        stderr=result.stderr_text,
        exitCode=result.exit_code,
        stdoutTruncated=result.stdout_truncated or None,
        stderrTruncated=result.stderr_truncated or None,
    )
    body_out = {"status": "success", "message": "ok", "data": data.model_dump(exclude_none=True)}
    return JSONResponse(body_out)


@router.post(
    "/{sandbox_id}/exec-stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream_command(
    sandbox_id: str, body: ExecRequest, caller: Caller, service: Exec, owner: Owner
) -> StreamingResponse:
    """``stdout``/``stderr`` events, one per line, as produced; then one ``exit`` event."""
    command = validate(body)
    # Entered before the response: its errors are JSON, and leaving it kills the command.
    stream = await owner.enter(service.stream(caller, sandbox_id, command))
    return owner.respond(
        exec_events(stream, command.timeout),
        caller,
        final=REVOKED,
        media_type="text/event-stream",
        headers=SSE_HEADERS,
    )


# Revocation ends the stream like an agent failure does: an ``exit`` with an error.
REVOKED = json_event("exit", {"exitCode": -1, "error": REVOKED_REASON})


async def exec_events(stream: ExecStream, time_limit: int) -> AsyncIterator[bytes]:
    splitters = {"stdout": LineSplitter(), "stderr": LineSplitter()}
    try:
        async for item in stream:
            if isinstance(item, ExecExit):
                for channel, splitter in splitters.items():
                    for line in splitter.flush():
                        yield event(channel, line)
                payload: dict[str, object] = {"exitCode": item.exit_code}
                if item.timed_out:
                    payload["error"] = f"command timed out after {time_limit}s"
                yield json_event("exit", payload)
                return
            for line in splitters[item.channel].feed(item.data):
                yield event(item.channel, line)
    except AgentError as exc:
        yield json_event("exit", {"exitCode": -1, "error": str(exc)})
