"""Background commands in a sandbox (CONTRACT §A.5 ``commands/*``, §B.2).

The commands themselves live in the sandbox's agent (``agent/commands.py``): they outlive the
HTTP request and the client connection, and their output and exit codes stay there. This layer
makes sure the sandbox runs (auto-wake), validates input, gives every agent call a deadline
(``wait`` and streams are the deliberate exceptions) and turns agent errors into ours.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from ..agentclient import (
    OpStream,
    Output,
    ProcessInfo,
    ProcessOps,
)
from ..errors import (
    DeadlineExceededError,
)
from ..schemas.processes import CommandRunRequest
from . import validation
from .accounts import Principal
from .agents import Refusal
from .image_user import requested_user
from .sandboxes import Running, SandboxService

log = logging.getLogger(__name__)
T = TypeVar("T")
AGENT_DEADLINE = 30.0  # every short agent call
# Someone following a stream, typing in a terminal or waiting for a command is using the
# sandbox even without new requests: touch its activity this often, or auto-sleep would
# freeze it under them.
KEEP_AWAKE_INTERVAL = 60.0


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
        refused: Refusal | None = None,
    ) -> T:
        return await self.sandboxes.agents.run(
            running.row.id,
            running.agent_socket,
            lambda client: work(client.procs),
            deadline=deadline,
            refused=refused,
        )

    async def call(
        self,
        caller: Principal,
        sandbox_id: str,
        work: Callable[[ProcessOps], Awaitable[T]],
        deadline: float | None = AGENT_DEADLINE,
        refused: Refusal | None = None,
    ) -> T:
        return await self.on(await self.running(caller, sandbox_id), work, deadline, refused)

    @asynccontextmanager
    async def open(
        self, running: Running, make: Callable[[ProcessOps], OpStream], refused: Refusal
    ) -> AsyncIterator[LiveStream]:
        """Hold a streaming op open; its head arrives before this yields (unknown ids fail
        here, as JSON errors)."""
        async with self.sandboxes.agents.open(
            running.row.id,
            running.agent_socket,
            lambda client: make(client.procs),
            deadline=AGENT_DEADLINE,
            refused=refused,
        ) as stream:
            yield LiveStream(stream, self, running)

    def keep_awake(self, running: Running) -> None:
        self.sandboxes.activity.record(running.row.id)


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
                self.calls.keep_awake(self.running)
                touched = anyio.current_time()
            yield chunk


RUN_REFUSED = Refusal(failure="Failed to run command", invalid="Failed to run command")
PROCESS_REFUSED = Refusal(failure="Command operation failed", not_found="Process not found")
ATTACH_REFUSED = Refusal(failure="Failed to attach", not_found="Process not found")


class CommandService:
    def __init__(self, sandboxes: SandboxService) -> None:
        self.calls = AgentCalls(sandboxes)
        self.follow_limit = sandboxes.settings.command_follow_limit_seconds

    async def run(self, caller: Principal, sandbox_id: str, body: CommandRunRequest) -> ProcessInfo:
        command = validation.command_text(body.command)
        env = validation.command_env(body.env)
        cwd = validation.command_cwd(body.cwd, absolute=True)

        requested = requested_user(body.user)

        running = await self.calls.running(caller, sandbox_id)
        cwd = cwd or running.row.workdir  # the image's WorkingDir
        user = await self.calls.sandboxes.image_users.effective(running.row, requested)

        async def work(procs: ProcessOps) -> ProcessInfo:
            return await procs.run_command(
                command, env=env, cwd=cwd, time_limit=body.timeout or None, user=user
            )

        return await self.calls.on(running, work, AGENT_DEADLINE, RUN_REFUSED)

    async def list(self, caller: Principal, sandbox_id: str) -> list[ProcessInfo]:
        return await self.calls.call(
            caller, sandbox_id, lambda procs: procs.list_commands(), refused=PROCESS_REFUSED
        )

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
                return await self.calls.on(
                    running, lambda p: p.wait_command(pid), None, PROCESS_REFUSED
                )
            if anyio.current_time() >= give_up:
                raise DeadlineExceededError("Command still running", f"after {limit:g}s")
            self.calls.keep_awake(running)

    async def stdin(
        self, caller: Principal, sandbox_id: str, pid: int, data: str, eof: bool
    ) -> None:
        await self._on_pid(
            caller, sandbox_id, pid, lambda procs: procs.write_stdin(pid, data, eof=eof)
        )

    @asynccontextmanager
    async def attach(
        self, caller: Principal, sandbox_id: str, pid: int
    ) -> AsyncIterator[LiveStream]:
        """Entered before the response starts, so an unknown pid is a JSON 404; leaving it
        detaches (the command keeps running)."""
        running = await self.calls.running(caller, sandbox_id)
        async with self.calls.open(
            running, lambda procs: procs.attach_command(pid), ATTACH_REFUSED
        ) as live:
            yield live

    async def _on_pid(
        self,
        caller: Principal,
        sandbox_id: str,
        pid: int,
        work: Callable[[ProcessOps], Awaitable[T]],
    ) -> T:
        return await self.calls.call(caller, sandbox_id, work, refused=PROCESS_REFUSED)
