"""Running one command in a sandbox, synchronously or as a stream (CONTRACT §A.5, §B.1).

Every call first makes sure the sandbox runs (auto-wake) and then talks to its agent over the
shared connection; a connection found broken is dropped and the call retried once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

from ..agentclient import AgentClient, AgentOperationError, ExecResult
from ..agentclient import ExecStream as AgentExecStream
from ..config import Settings
from ..errors import InvalidInputError
from ..schemas.exec import ExecRequest
from .accounts import Principal
from .sandboxes import Running, SandboxService

T = TypeVar("T")
MAX_COMMAND_CHARS = 100_000
DEFAULT_TIMEOUT = 30
MAX_TIMEOUT = 300
MAX_CWD_CHARS = 4096


@dataclass(frozen=True)
class Command:
    command: str
    timeout: int
    env: dict[str, str]
    cwd: str | None


def validate(body: ExecRequest) -> Command:
    command = (body.command or "").strip()
    if not command:
        raise InvalidInputError("Command is required")
    if len(command) > MAX_COMMAND_CHARS:
        raise InvalidInputError("Command too long", f"at most {MAX_COMMAND_CHARS} characters")
    timeout = body.timeout or DEFAULT_TIMEOUT
    if not 1 <= timeout <= MAX_TIMEOUT:
        raise InvalidInputError("Invalid timeout", f"must be between 1 and {MAX_TIMEOUT} seconds")
    env = body.env or {}
    for key, value in env.items():
        if not key or "=" in key or "\x00" in key or "\x00" in value:
            raise InvalidInputError("Invalid env", f"bad variable {key[:40]!r}")
    cwd = body.cwd or None
    if cwd is not None and (len(cwd) > MAX_CWD_CHARS or "\x00" in cwd):
        raise InvalidInputError("Invalid cwd")
    return Command(command=command, timeout=timeout, env=env, cwd=cwd)


class ExecService:
    def __init__(self, settings: Settings, sandboxes: SandboxService) -> None:
        self.settings = settings
        self.sandboxes = sandboxes

    async def with_agent(self, running: Running, work: Callable[[AgentClient], Awaitable[T]]) -> T:
        return await self.sandboxes.agents.run(running.row.id, running.agent_socket, work)

    async def run(self, caller: Principal, sandbox_id: str, command: Command) -> ExecResult:
        running = await self.sandboxes.ensure_running(caller, sandbox_id)

        async def work(agent: AgentClient) -> ExecResult:
            return await agent.exec(
                command.command,
                env=command.env,
                cwd=command.cwd,
                timeout=command.timeout,
                max_output=self.settings.exec_output_cap_bytes,
            )

        try:
            return await self.with_agent(running, work)
        except AgentOperationError as exc:
            raise InvalidInputError("Command execution failed", exc.message) from exc

    @asynccontextmanager
    async def stream(
        self, caller: Principal, sandbox_id: str, command: Command
    ) -> AsyncIterator[AgentExecStream]:
        """Entered before the HTTP response starts, so a bad cwd or a dead agent is a JSON
        error; leaving it (client gone, error) kills the command."""
        running = await self.sandboxes.ensure_running(caller, sandbox_id)

        async def open_stream(agent: AgentClient) -> tuple[AgentExecStream, AgentExecStream]:
            stream = agent.exec_stream(
                command.command, env=command.env, cwd=command.cwd, timeout=command.timeout
            )
            return stream, await stream.__aenter__()

        try:
            cm, stream = await self.with_agent(running, open_stream)
        except AgentOperationError as exc:
            raise InvalidInputError("Command execution failed", exc.message) from exc
        try:
            yield stream
        finally:
            await cm.__aexit__(None, None, None)
