"""Running one command in a sandbox, synchronously or as a stream (CONTRACT §A.5, §B.1).

Every call first makes sure the sandbox runs (auto-wake) and then talks to its agent over the
shared connection; a connection found broken is dropped and the call retried once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from ..agentclient import AgentClient, ExecResult
from ..agentclient import ExecStream as AgentExecStream
from ..config import Settings
from ..errors import InvalidInputError
from ..schemas.exec import ExecRequest
from . import validation
from .accounts import Principal
from .agents import Refusal
from .image_user import requested_user
from .sandboxes import SandboxService

DEFAULT_TIMEOUT = 30
MAX_TIMEOUT = 300
REFUSED = Refusal(failure="Command execution failed", invalid="Command execution failed")


@dataclass(frozen=True)
class Command:
    command: str
    timeout: int
    env: dict[str, str]
    cwd: str | None
    user: str | None = None


def validate(body: ExecRequest) -> Command:
    command = validation.command_text(body.command)
    timeout = body.timeout or DEFAULT_TIMEOUT
    if not 1 <= timeout <= MAX_TIMEOUT:
        raise InvalidInputError("Invalid timeout", f"must be between 1 and {MAX_TIMEOUT} seconds")
    env = validation.command_env(body.env)
    cwd = validation.command_cwd(body.cwd, absolute=False)
    user = requested_user(body.user)
    return Command(command=command, timeout=timeout, env=env, cwd=cwd, user=user)


class ExecService:
    def __init__(self, settings: Settings, sandboxes: SandboxService) -> None:
        self.settings = settings
        self.sandboxes = sandboxes

    async def run(self, caller: Principal, sandbox_id: str, command: Command) -> ExecResult:
        running = await self.sandboxes.ensure_running(caller, sandbox_id)
        user = await self.sandboxes.image_users.effective(running.row, command.user)

        async def work(agent: AgentClient) -> ExecResult:
            return await agent.exec(
                command.command,
                env=command.env,
                cwd=command.cwd or running.row.workdir,
                timeout=command.timeout,
                max_output=self.settings.exec_output_cap_bytes,
                user=user,
            )

        return await self.sandboxes.agents.run(
            running.row.id, running.agent_socket, work, refused=REFUSED
        )

    @asynccontextmanager
    async def stream(
        self, caller: Principal, sandbox_id: str, command: Command
    ) -> AsyncIterator[AgentExecStream]:
        """Entered before the HTTP response starts, so a bad cwd or a dead agent is a JSON
        error; leaving it (client gone, error) kills the command."""
        running = await self.sandboxes.ensure_running(caller, sandbox_id)
        user = await self.sandboxes.image_users.effective(running.row, command.user)

        def open_stream(agent: AgentClient) -> AgentExecStream:
            return agent.exec_stream(
                command.command,
                env=command.env,
                cwd=command.cwd or running.row.workdir,  # the image's WorkingDir
                timeout=command.timeout,
                user=user,  # the request's, else the image's User
            )

        agents = self.sandboxes.agents
        async with agents.open(
            running.row.id, running.agent_socket, open_stream, refused=REFUSED
        ) as stream:
            yield stream
