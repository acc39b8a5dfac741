"""One long-lived, multiplexed agent connection per sandbox, shared by every request.

An ``AgentClient`` owns a task group, which anyio requires to be entered and exited in the same
task. So each connection lives in a holder task of the app's task group; requests borrow the
client, and ``forget`` (stop, delete, death) ends the holder, which closes the connection.

Each sandbox's socket must be owned by that sandbox's root on the host, which differs per
sandbox (the driver reports it as ``SandboxInfo.agent_socket_owner``): :class:`AgentSocket`
carries the path together with that uid, so a socket swapped for another one is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.abc

from ..agentclient import AgentClient, AgentConnectionError, AgentError, AgentOperationError
from ..drivers.base import SandboxInfo
from ..errors import DeadlineExceededError, SandboxUnavailableError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class AgentSocket:
    """Where a sandbox's agent listens, and the host uid that must own that socket."""

    path: Path
    owner_uid: int | None

    @classmethod
    def of(cls, info: SandboxInfo) -> AgentSocket:
        return cls(info.agent_socket, info.agent_socket_owner)


@dataclass
class _Held:
    client: AgentClient
    release: anyio.Event = field(default_factory=anyio.Event)


class AgentPool:
    def __init__(self, task_group: anyio.abc.TaskGroup, connect_timeout: float) -> None:
        self._task_group = task_group
        self._connect_timeout = connect_timeout
        self._held: dict[str, _Held] = {}
        self._locks: dict[str, anyio.Lock] = {}

    async def client(self, sandbox_id: str, socket: AgentSocket) -> AgentClient:
        """The sandbox's connection, opened on first use (or after the previous one broke)."""
        held = self._held.get(sandbox_id)
        if held is not None and not held.client.closed:
            return held.client
        async with self._locks.setdefault(sandbox_id, anyio.Lock()):
            held = self._held.get(sandbox_id)
            if held is not None and held.client.closed:
                self.forget(sandbox_id)
                held = None
            if held is None:
                try:
                    client: AgentClient = await self._task_group.start(
                        self._hold, sandbox_id, socket
                    )
                except (AgentError, OSError) as exc:
                    raise SandboxUnavailableError(
                        "Sandbox agent unreachable", f"{sandbox_id}: {exc}"
                    ) from exc
                return client
            return held.client

    async def run(
        self,
        sandbox_id: str,
        socket: AgentSocket,
        work: Callable[[AgentClient], Awaitable[T]],
        *,
        deadline: float | None = None,
    ) -> T:
        """Run ``work`` on the sandbox's agent, reconnecting once if the connection was found
        broken. The agent's refusals (``AgentOperationError``) pass through unchanged; other
        agent failures become ``SandboxUnavailableError``, a missed deadline
        ``DeadlineExceededError``."""
        for attempt in (1, 2):
            client = await self.client(sandbox_id, socket)
            try:
                with anyio.fail_after(deadline):
                    return await work(client)
            except AgentConnectionError as exc:
                self.forget(sandbox_id)
                if attempt == 2:
                    raise SandboxUnavailableError("Sandbox agent unreachable", str(exc)) from exc
            except AgentOperationError:
                raise
            except AgentError as exc:  # protocol errors: the connection is unusable
                self.forget(sandbox_id)
                raise SandboxUnavailableError("Sandbox agent error", str(exc)) from exc
            except TimeoutError:
                raise DeadlineExceededError(
                    "Sandbox agent did not answer in time", f"no reply within {deadline:g}s"
                ) from None
        raise AssertionError("unreachable")

    async def ping(self, sandbox_id: str, socket: AgentSocket) -> None:
        try:
            await (await self.client(sandbox_id, socket)).ping()
        except AgentError as exc:
            self.forget(sandbox_id)
            raise SandboxUnavailableError("Sandbox agent unreachable", str(exc)) from exc

    def forget(self, sandbox_id: str) -> None:
        """Close the sandbox's connection (if any); the next use reconnects."""
        held = self._held.pop(sandbox_id, None)
        self._locks.pop(sandbox_id, None)
        if held is not None:
            held.release.set()

    def close_all(self) -> None:
        for sandbox_id in list(self._held):
            self.forget(sandbox_id)

    async def _hold(
        self,
        sandbox_id: str,
        socket: AgentSocket,
        *,
        task_status: anyio.abc.TaskStatus[AgentClient] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        held: _Held | None = None
        try:
            client_cm = AgentClient(
                socket.path, connect_timeout=self._connect_timeout, owner_uid=socket.owner_uid
            )
            async with client_cm as client:
                held = _Held(client)
                self._held[sandbox_id] = held
                task_status.started(client)
                await held.release.wait()
        except AgentError as exc:
            if held is None:
                raise  # before started(): the caller of client() gets it
            log.info("agent connection of %s ended: %s", sandbox_id, exc)
        finally:
            if held is not None and self._held.get(sandbox_id) is held:
                del self._held[sandbox_id]
