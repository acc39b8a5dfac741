"""Terminal-backed sessions: persistent shell sessions (``session-exec``, CONTRACT §B.3/§B.4)
and PTY sessions (``pty/*``, §B.5).

Both live in the sandbox's agent (``agent/shells.py``, ``agent/pty.py``) and die with the
sandbox. Their ids are separate namespaces there and cannot collide (``sess-…`` / ``pty-…``).
Shell-session failures are all 400 with the agent's text (§B.4); PTY failures follow the usual
table (unknown session 404).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

from ..agentclient import ProcessOps, ShellResult, TerminalInfo
from ..errors import InvalidInputError
from ..schemas.processes import SessionExecRequest
from . import validation
from .accounts import Principal
from .agents import Refusal
from .commands import AGENT_DEADLINE, AgentCalls, LiveStream
from .image_user import requested_user
from .sandboxes import SandboxService

T = TypeVar("T")
ACTIONS = ("create", "exec", "input", "resize", "close")
MAX_SESSION_ID_CHARS = 100
DEFAULT_SESSION_TIMEOUT = 300


def session_id(value: str | None, required: bool = True) -> str | None:
    if not value:
        if required:
            raise InvalidInputError("Session ID is required")
        return None
    if len(value) > MAX_SESSION_ID_CHARS or not value.isprintable():
        raise InvalidInputError(
            "Invalid session ID", f"1..{MAX_SESSION_ID_CHARS} printable characters"
        )
    return value


# CONTRACT §B.4: a session's refusal is a 400 whose error is the agent's own text.
SESSION_REFUSED = Refusal(failure=None)
TERMINAL_REFUSED = Refusal(failure="Terminal operation failed", not_found="Session not found")
ATTACH_REFUSED = Refusal(failure="Failed to open terminal", not_found="Session not found")


@dataclass(frozen=True)
class SessionOutcome:
    session_id: str | None = None
    output: bytes | None = None
    exit_code: int | None = None
    error: str | None = None


class ShellService:
    def __init__(self, sandboxes: SandboxService) -> None:
        self.calls = AgentCalls(sandboxes)

    async def _call(
        self,
        caller: Principal,
        sandbox_id: str,
        work: Callable[[ProcessOps], Awaitable[T]],
        deadline: float = AGENT_DEADLINE,
    ) -> T:
        return await self.calls.call(caller, sandbox_id, work, deadline, SESSION_REFUSED)

    async def act(
        self, caller: Principal, sandbox_id: str, body: SessionExecRequest
    ) -> SessionOutcome:
        action = body.action
        if action not in ACTIONS:
            raise InvalidInputError("Invalid action", f"must be one of {', '.join(ACTIONS)}")
        sid = session_id(body.session_id, required=action != "create")
        if action == "create":
            requested = requested_user(body.user)
            running = await self.calls.running(caller, sandbox_id)
            user = await self.calls.sandboxes.image_users.effective(running.row, requested)
            created = await self.calls.on(
                running,
                lambda p: p.shell_create(
                    sid, shell=body.shell, cols=body.cols, rows=body.rows, user=user
                ),
                refused=SESSION_REFUSED,
            )
            return SessionOutcome(session_id=created)
        assert sid is not None
        if action == "exec":
            command = validation.command_text(body.command)
            limit = body.timeout or DEFAULT_SESSION_TIMEOUT
            result: ShellResult = await self._call(
                caller,
                sandbox_id,
                lambda p: p.shell_exec(sid, command, time_limit=limit),
                limit + AGENT_DEADLINE,
            )
            error = None
            if result.timed_out:
                error = (
                    f"command still running after {limit}s; the session stays busy until it ends"
                )
            return SessionOutcome(sid, result.output, result.exit_code, error)
        if action == "input":
            if body.input is None:
                raise InvalidInputError("Input is required")
            text = body.input
            output = await self._call(caller, sandbox_id, lambda p: p.shell_input(sid, text))
            return SessionOutcome(sid, output)
        if action == "resize":
            if body.cols is None or body.rows is None:
                raise InvalidInputError("cols and rows are required", "cols 1..500, rows 1..200")
            cols, rows = body.cols, body.rows
            await self._call(caller, sandbox_id, lambda p: p.shell_resize(sid, cols, rows))
            return SessionOutcome()
        await self._call(caller, sandbox_id, lambda p: p.shell_close(sid))
        return SessionOutcome()

    @asynccontextmanager
    async def stream(
        self, caller: Principal, sandbox_id: str, sid: str, command: str, limit: int
    ) -> AsyncIterator[LiveStream]:
        """Entered before the response starts (unknown or busy session: a JSON 400)."""
        running = await self.calls.running(caller, sandbox_id)
        async with self.calls.open(
            running,
            lambda p: p.shell_exec_stream(sid, command, time_limit=limit),
            SESSION_REFUSED,
        ) as live:
            yield live


class PtyService:
    def __init__(self, sandboxes: SandboxService) -> None:
        self.calls = AgentCalls(sandboxes)

    async def _call(
        self, caller: Principal, sandbox_id: str, work: Callable[[ProcessOps], Awaitable[T]]
    ) -> T:
        return await self.calls.call(caller, sandbox_id, work, refused=TERMINAL_REFUSED)

    async def create(
        self, caller: Principal, sandbox_id: str, cols: int, rows: int
    ) -> TerminalInfo:
        running = await self.calls.running(caller, sandbox_id)
        user = await self.calls.sandboxes.image_users.default(running.row)
        return await self.calls.on(
            running, lambda p: p.pty_create(cols, rows, user), refused=TERMINAL_REFUSED
        )

    async def list(self, caller: Principal, sandbox_id: str) -> list[TerminalInfo]:
        return await self._call(caller, sandbox_id, lambda p: p.pty_list())

    async def delete(self, caller: Principal, sandbox_id: str, sid: str) -> None:
        await self._call(caller, sandbox_id, lambda p: p.pty_close(sid))

    async def execute(self, caller: Principal, sandbox_id: str, sid: str, command: str) -> None:
        await self._call(caller, sandbox_id, lambda p: p.pty_input(sid, command + "\n"))

    async def buffer(self, caller: Principal, sandbox_id: str, sid: str) -> bytes:
        return await self._call(caller, sandbox_id, lambda p: p.pty_buffer(sid))

    async def resize(
        self, caller: Principal, sandbox_id: str, sid: str, cols: int, rows: int
    ) -> None:
        await self._call(caller, sandbox_id, lambda p: p.pty_resize(sid, cols, rows))

    @asynccontextmanager
    async def attach(
        self, caller: Principal, sandbox_id: str, sid: str | None
    ) -> AsyncIterator[tuple[LiveStream, Callable[[str], Awaitable[None]]]]:
        """The terminal's output stream and a function that types into it.

        ``sid`` None starts an ephemeral login shell that ends when this context is left.
        Entered before the WebSocket is accepted, so failures are HTTP errors.
        """
        running = await self.calls.running(caller, sandbox_id)
        user = None if sid else await self.calls.sandboxes.image_users.default(running.row)
        attach = self.calls.open(running, lambda p: p.pty_attach(sid, user=user), ATTACH_REFUSED)
        async with attach as live:
            terminal = str(live.head.get("id", sid))

            async def type_in(text: str) -> None:
                await self.calls.on(running, lambda p: p.pty_input(terminal, text))

            yield live, type_in
