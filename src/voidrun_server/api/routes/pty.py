"""Terminals: the ephemeral ``/pty`` WebSocket and persistent ``/pty/sessions`` (CONTRACT §B.5).

WebSockets authenticate with ``?apiKey=`` and fail before the upgrade with an ordinary HTTP
401/404 JSON response; framing, close codes and the slow-client policy are in ``api/ws.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, WebSocket

from ...agentclient import TerminalInfo
from ...errors import InvalidInputError
from ...schemas.common import MessageEnvelope, envelope
from ...schemas.processes import (
    CreatePTYSessionRequest,
    DataEnvelope,
    ExecuteInSessionRequest,
    PTYBuffer,
    PTYSessionCreated,
    PTYSessionInfo,
    ResizeTerminalRequest,
)
from ...services.pty import PtyService
from ...services.validation import MAX_COMMAND_CHARS
from ..deps import Caller, Ctx
from ..streams import Owner
from ..ws import bridge

router = APIRouter(prefix="/api/sandboxes", tags=["Execution"])


async def pty_service(ctx: Ctx) -> PtyService:
    return PtyService(ctx.sandbox_service())


Terminals = Annotated[PtyService, Depends(pty_service)]


def public(info: TerminalInfo) -> dict[str, Any]:
    created = datetime.fromtimestamp(info.created_at, tz=UTC)
    model = PTYSessionInfo(id=info.id, created_at=created, clients=info.clients, alive=info.alive)
    return model.model_dump(mode="json", by_alias=True)


@router.websocket("/{sandbox_id}/pty")
async def ephemeral_terminal(
    websocket: WebSocket, sandbox_id: str, caller: Caller, service: Terminals, owner: Owner
) -> None:
    """An interactive root login shell that lives exactly as long as this WebSocket."""
    async with owner.revocable(websocket, caller):
        output, type_in = await owner.enter(service.attach(caller, sandbox_id, None))
        await bridge(websocket, output, type_in)


@router.post("/{sandbox_id}/pty/sessions", response_model=DataEnvelope)
async def create_session(
    sandbox_id: str,
    caller: Caller,
    service: Terminals,
    body: CreatePTYSessionRequest | None = None,
) -> dict[str, Any]:
    """A persistent terminal: survives disconnects, serves several clients at once."""
    size = body or CreatePTYSessionRequest()
    info = await service.create(caller, sandbox_id, size.cols, size.rows)
    created = datetime.fromtimestamp(info.created_at, tz=UTC)
    data = PTYSessionCreated(session_id=info.id, created_at=created)
    return envelope("Session created", data.model_dump(mode="json", by_alias=True))


@router.get("/{sandbox_id}/pty/sessions", response_model=DataEnvelope)
async def list_sessions(sandbox_id: str, caller: Caller, service: Terminals) -> dict[str, Any]:
    sessions = [public(info) for info in await service.list(caller, sandbox_id)]
    return envelope("Sessions retrieved", {"sessions": sessions})


@router.websocket("/{sandbox_id}/pty/sessions/{session_id}")
async def attach_session(
    websocket: WebSocket,
    sandbox_id: str,
    session_id: str,
    caller: Caller,
    service: Terminals,
    owner: Owner,
) -> None:
    """Attach to a persistent terminal: its scrollback first, then live output."""
    async with owner.revocable(websocket, caller):
        output, type_in = await owner.enter(service.attach(caller, sandbox_id, session_id))
        await bridge(websocket, output, type_in)


@router.delete("/{sandbox_id}/pty/sessions/{session_id}", response_model=MessageEnvelope)
async def delete_session(
    sandbox_id: str, session_id: str, caller: Caller, service: Terminals
) -> dict[str, Any]:
    """Kill the terminal and everything it started; the id is 404 afterwards."""
    await service.delete(caller, sandbox_id, session_id)
    return envelope("Session deleted")


@router.post("/{sandbox_id}/pty/sessions/{session_id}/execute", response_model=MessageEnvelope)
async def execute_in_session(
    sandbox_id: str,
    session_id: str,
    body: ExecuteInSessionRequest,
    caller: Caller,
    service: Terminals,
) -> dict[str, Any]:
    """Type ``command`` and Enter into the terminal; does not wait for it."""
    if not body.command:
        raise InvalidInputError("Command is required")
    if len(body.command) > MAX_COMMAND_CHARS:
        raise InvalidInputError("Command too long", f"at most {MAX_COMMAND_CHARS} characters")
    await service.execute(caller, sandbox_id, session_id, body.command)
    return envelope("Command sent")


@router.get("/{sandbox_id}/pty/sessions/{session_id}/buffer", response_model=DataEnvelope)
async def session_buffer(
    sandbox_id: str, session_id: str, caller: Caller, service: Terminals
) -> dict[str, Any]:
    """The terminal's scrollback (its last 256 KiB of output)."""
    output = await service.buffer(caller, sandbox_id, session_id)
    data = PTYBuffer(output=output.decode("utf-8", errors="replace"))
    return envelope("Buffer retrieved", data.model_dump())


@router.post("/{sandbox_id}/pty/sessions/{session_id}/resize", response_model=MessageEnvelope)
async def resize_session(
    sandbox_id: str,
    session_id: str,
    body: ResizeTerminalRequest,
    caller: Caller,
    service: Terminals,
) -> dict[str, Any]:
    await service.resize(caller, sandbox_id, session_id, body.cols, body.rows)
    return envelope("Terminal resized")
