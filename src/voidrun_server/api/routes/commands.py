"""Background commands: ``/commands/run|list|kill|wait|attach|stdin`` (CONTRACT §A.5, §B.2).

Bare (unenveloped) JSON bodies, as the SDK expects. A command outlives the request that starts
it and the client connection; ``attach`` replays its buffered output from the oldest byte kept,
then follows it live until it exits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from ...agentclient import AgentError
from ...agentclient import ProcessInfo as AgentProcess
from ...errors import AuthenticationError, DeadlineExceededError
from ...schemas.processes import (
    CommandKillResponse,
    CommandListResponse,
    CommandRunRequest,
    CommandRunResponse,
    CommandStdinRequest,
    CommandStdinResponse,
    CommandWaitResponse,
    PidRequest,
    ProcessInfo,
)
from ...services.commands import CommandService, LiveStream
from ..deps import Caller, Ctx
from ..sse import SSE_HEADERS, LineSplitter, event, json_event
from ..streams import REVOKED_REASON, Owner, Streams

router = APIRouter(prefix="/api/sandboxes", tags=["Execution"])
SSE_DOC: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}}


async def command_service(ctx: Ctx) -> CommandService:
    return CommandService(ctx.sandbox_service())


Commands = Annotated[CommandService, Depends(command_service)]


def epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def public(process: AgentProcess) -> ProcessInfo:
    return ProcessInfo(
        pid=process.pid,
        command=process.command,
        start_time=epoch(process.start_time),
        running=process.running,
        exit_code=None if process.running else process.exit_code,
    )


@router.post("/{sandbox_id}/commands/run", response_model=CommandRunResponse)
async def run_command(
    sandbox_id: str, body: CommandRunRequest, caller: Caller, service: Commands
) -> CommandRunResponse:
    """Start a command in the background and return its pid at once."""
    started = await service.run(caller, sandbox_id, body)
    return CommandRunResponse(pid=started.pid, command=started.command)


@router.get(
    "/{sandbox_id}/commands/list",
    response_model=CommandListResponse,
    response_model_exclude_none=True,
)
async def list_commands(sandbox_id: str, caller: Caller, service: Commands) -> CommandListResponse:
    """Running and recently exited (the last 100) background commands, oldest first."""
    processes = await service.list(caller, sandbox_id)
    return CommandListResponse(processes=[public(p) for p in processes])


@router.post("/{sandbox_id}/commands/kill", response_model=CommandKillResponse)
async def kill_command(
    sandbox_id: str, body: PidRequest, caller: Caller, service: Commands
) -> CommandKillResponse:
    """SIGKILL the command's whole process group; its exit code becomes 137."""
    await service.kill(caller, sandbox_id, body.pid)
    return CommandKillResponse()


@router.post(
    "/{sandbox_id}/commands/wait",
    response_model=CommandWaitResponse,
    response_model_exclude_none=True,
)
async def wait_command(
    sandbox_id: str, body: PidRequest, caller: Caller, service: Commands, streams: Streams
) -> CommandWaitResponse:
    """Block until the command exits (at most one hour); 401 if the key is revoked meanwhile."""
    with streams.guard(caller.key_id) as guard:
        done = await service.wait(caller, sandbox_id, body.pid)
    if guard.cancelled_caught:
        raise AuthenticationError(REVOKED_REASON)
    error = "command timed out and was killed" if done.timed_out else None
    return CommandWaitResponse(exit_code=done.exit_code or 0, error=error)


@router.post("/{sandbox_id}/commands/stdin", response_model=CommandStdinResponse)
async def write_stdin(
    sandbox_id: str, body: CommandStdinRequest, caller: Caller, service: Commands
) -> CommandStdinResponse:
    """Extension: write ``data`` to the command's stdin; ``eof`` closes it afterwards.

    A background command's stdin is a pipe that stays open until ``eof`` (or exit), so a
    command that reads stdin to the end waits for it, as under ``docker run -i``.
    """
    await service.stdin(caller, sandbox_id, body.pid, body.data, body.eof)
    return CommandStdinResponse()


@router.post("/{sandbox_id}/commands/attach", response_class=StreamingResponse, responses=SSE_DOC)
async def attach_command(
    sandbox_id: str, body: PidRequest, caller: Caller, service: Commands, owner: Owner
) -> StreamingResponse:
    """SSE: buffered output first, then live ``stdout``/``stderr`` lines, then one ``exit``."""
    live = await owner.enter(service.attach(caller, sandbox_id, body.pid))  # unknown: JSON 404
    return owner.respond(
        attach_events(live, service.follow_limit),
        caller,
        final=json_event("error", {"error": REVOKED_REASON}),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
    )


async def attach_events(live: LiveStream, limit: float) -> AsyncIterator[bytes]:
    splitters = {"stdout": LineSplitter(), "stderr": LineSplitter()}
    try:
        async for chunk in live.chunks(limit):
            if chunk is None:
                yield b": keepalive\n\n"  # a comment: clients and proxies see life
                continue
            for line in splitters[chunk.channel].feed(chunk.data):
                yield event(chunk.channel, line)
    except AgentError as exc:
        yield json_event("error", {"error": str(exc)})
        return
    except DeadlineExceededError as exc:
        yield json_event("error", {"error": f"{exc.message} ({exc.details}); attach again"})
        return
    for channel, splitter in splitters.items():
        for line in splitter.flush():
            yield event(channel, line)
    result = live.result
    code = result.get("exitCode")
    payload: dict[str, object] = {"exitCode": code if type(code) is int else -1}
    if result.get("timedOut"):
        payload["error"] = "command timed out and was killed"
    if result.get("dropped"):
        payload["outputDropped"] = result["dropped"]  # bytes the ring had discarded
    yield json_event("exit", payload)
