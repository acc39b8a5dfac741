"""Background commands in a sandbox (CONTRACT §A.5 ``commands/*``, §B.2).

The commands themselves live in the sandbox's agent (``agent/commands.py``): they outlive the
HTTP request and the client connection, and their output and exit codes stay there. This layer
makes sure the sandbox runs (auto-wake), validates input, gives every agent call a deadline
(``wait`` and streams are the deliberate exceptions) and turns agent errors into ours.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from ..agent.protocol import BAD_REQUEST, IO_ERROR, NOT_FOUND, TOO_MANY_REQUESTS
from ..agentclient import (
    AgentOperationError,
    OpStream,
    Output,
    ProcessInfo,
    ProcessOps,
)
from ..errors import (
    DeadlineExceededError,
    InvalidInputError,
    NotFoundError,
    VoidRunError,
)
from ..schemas.processes import CommandRunRequest
from ..store.db import transaction
from ..store.repos import sandboxes as repo
from ..store.types import utcnow
from .accounts import Principal
from .sandboxes import Running, SandboxService

log = logging.getLogger(__name__)
T = TypeVar("T")
AGENT_DEADLINE = 30.0  # every short agent call
# Someone following a stream, typing in a terminal or waiting for a command is using the
# sandbox even without new requests: touch its activity this often, or auto-sleep would
# freeze it under them.
KEEP_AWAKE_INTERVAL = 60.0
MAX_COMMAND_CHARS = 100_000
MAX_PATH_CHARS = 4096


class AgentCalls:
    """Process ops on a sandbox's shared agent connection, reconnecting once if it broke."""

    def __init__(self, sandboxes: SandboxService) -> None:
        self.sandboxes = sandboxes

    async def running(self, caller: Principal, sandbox_id: str) -> Running:
        return await self.sandboxes.ensure_running(caller, sandbox_id)

    async def on(
        self,
        running: Running,
        work: Callable[[ProcessOps], Awaitable[T]],
        deadline: float | None = AGENT_DEADLINE,
    ) -> T:
        return await self.sandboxes.agents.run(
            running.row.id,
            running.agent_socket,
            lambda client: work(client.procs),
            deadline=deadline,
        )

    async def call(
        self,
        caller: Principal,
        sandbox_id: str,
        work: Callable[[ProcessOps], Awaitable[T]],
        deadline: float | None = AGENT_DEADLINE,
    ) -> T:
        return await self.on(await self.running(caller, sandbox_id), work, deadline)

    async def enter(self, running: Running, make: Callable[[ProcessOps], OpStream]) -> LiveStream:
        """Open a streaming op and wait for its head (unknown ids fail here, as JSON errors)."""

        async def start(procs: ProcessOps) -> OpStream:
            return await make(procs).__aenter__()

        return LiveStream(await self.on(running, start), self, running)

    async def keep_awake(self, running: Running) -> None:
        try:
            async with transaction(self.sandboxes.sessions) as session:
                await repo.touch_activity(session, running.row.id, utcnow())
        except Exception as exc:  # a database hiccup must not end the stream
            log.warning("could not record activity of %s: %s", running.row.id, exc)


@dataclass
class LiveStream:
    """An open agent stream, and what keeps its sandbox awake while somebody follows it."""

    stream: OpStream
    calls: AgentCalls
    running: Running

    @property
    def head(self) -> dict[str, Any]:
        return self.stream.head

    @property
    def result(self) -> dict[str, Any]:
        return self.stream.result or {}

    async def chunks(self, limit: float = math.inf) -> AsyncIterator[Output | None]:
        """The stream's chunks, and ``None`` after each ``KEEP_AWAKE_INTERVAL`` of quiet (for
        heartbeats); activity is recorded at most once per interval either way. After
        ``limit`` seconds it raises ``DeadlineExceededError`` (the caller may attach again)."""
        touched = anyio.current_time()
        give_up = touched + limit
        while True:
            chunk: Output | None = None
            now = anyio.current_time()
            if now >= give_up:
                raise DeadlineExceededError("Stream time limit reached", f"after {limit:g}s")
            with anyio.move_on_after(min(KEEP_AWAKE_INTERVAL, give_up - now)):
                try:
                    chunk = await self.stream.__anext__()  # cancel-safe: no frame is lost
                except StopAsyncIteration:
                    return
            if anyio.current_time() - touched >= KEEP_AWAKE_INTERVAL:
                await self.calls.keep_awake(self.running)
                touched = anyio.current_time()
            yield chunk

    async def close(self) -> None:
        await self.stream.__aexit__(None, None, None)


def translate(exc: AgentOperationError, failure: str, not_found: str) -> VoidRunError:
    """Our error for an agent's refusal: unknown ids 404; bad input, limits and a closed stdin
    or ended shell (``io_error`` from these ops) 400; anything else 500."""
    if exc.code == NOT_FOUND:
        return NotFoundError(not_found, exc.message)
    if exc.code in (BAD_REQUEST, TOO_MANY_REQUESTS, IO_ERROR):
        return InvalidInputError(exc.message)
    return VoidRunError(failure, exc.message)


def check_env_cwd(env: Mapping[str, str] | None, cwd: str | None) -> None:
    for key, value in (env or {}).items():
        if not key or "=" in key or "\x00" in key or "\x00" in value:
            raise InvalidInputError("Invalid env", f"bad variable {key[:40]!r}")
    if cwd is not None and (len(cwd) > MAX_PATH_CHARS or "\x00" in cwd or not cwd.startswith("/")):
        raise InvalidInputError("Invalid cwd", "must be an absolute path")


def require_command(command: str | None) -> str:
    text = (command or "").strip()
    if not text:
        raise InvalidInputError("Command is required")
    if len(text) > MAX_COMMAND_CHARS:
        raise InvalidInputError("Command too long", f"at most {MAX_COMMAND_CHARS} characters")
    return text


class CommandService:
    def __init__(self, sandboxes: SandboxService) -> None:
        self.calls = AgentCalls(sandboxes)
        self.follow_limit = sandboxes.settings.command_follow_limit_seconds

    async def run(self, caller: Principal, sandbox_id: str, body: CommandRunRequest) -> ProcessInfo:
        command = require_command(body.command)
        check_env_cwd(body.env, body.cwd or None)

        async def work(procs: ProcessOps) -> ProcessInfo:
            return await procs.run_command(
                command, env=body.env, cwd=body.cwd or None, time_limit=body.timeout or None
            )

        try:
            return await self.calls.call(caller, sandbox_id, work)
        except AgentOperationError as exc:
            if exc.code == NOT_FOUND:  # the working directory or the shell is missing
                raise InvalidInputError("Failed to run command", exc.message) from exc
            raise translate(exc, "Failed to run command", "Not found") from exc

    async def list(self, caller: Principal, sandbox_id: str) -> list[ProcessInfo]:
        return await self.calls.call(caller, sandbox_id, lambda procs: procs.list_commands())

    async def kill(self, caller: Principal, sandbox_id: str, pid: int) -> None:
        await self._on_pid(caller, sandbox_id, pid, lambda procs: procs.kill_command(pid))

    async def wait(self, caller: Principal, sandbox_id: str, pid: int) -> ProcessInfo:
        """Block until the command exits (at most ``follow_limit``, then 504)."""
        running = await self.calls.running(caller, sandbox_id)
        limit = self.follow_limit
        give_up = anyio.current_time() + limit
        while True:
            # Waiting is idempotent: ask again each interval, recording activity in between.
            with anyio.move_on_after(min(KEEP_AWAKE_INTERVAL, give_up - anyio.current_time())):
                try:
                    return await self.calls.on(running, lambda p: p.wait_command(pid), None)
                except AgentOperationError as exc:
                    raise translate(exc, "Command operation failed", "Process not found") from exc
            if anyio.current_time() >= give_up:
                raise DeadlineExceededError("Command still running", f"after {limit:g}s")
            await self.calls.keep_awake(running)

    async def stdin(
        self, caller: Principal, sandbox_id: str, pid: int, data: str, eof: bool
    ) -> None:
        await self._on_pid(
            caller, sandbox_id, pid, lambda procs: procs.write_stdin(pid, data, eof=eof)
        )

    async def attach(self, caller: Principal, sandbox_id: str, pid: int) -> LiveStream:
        """Opened before the response starts, so an unknown pid is a JSON 404; closing it
        detaches (the command keeps running)."""
        running = await self.calls.running(caller, sandbox_id)
        try:
            return await self.calls.enter(running, lambda procs: procs.attach_command(pid))
        except AgentOperationError as exc:
            raise translate(exc, "Failed to attach", "Process not found") from exc

    async def _on_pid(
        self,
        caller: Principal,
        sandbox_id: str,
        pid: int,
        work: Callable[[ProcessOps], Awaitable[T]],
    ) -> T:
        try:
            return await self.calls.call(caller, sandbox_id, work)
        except AgentOperationError as exc:
            raise translate(exc, "Command operation failed", "Process not found") from exc
