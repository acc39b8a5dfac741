"""One long-lived, multiplexed agent connection per sandbox, shared by every request.

An ``AgentClient`` owns a task group, which anyio requires to be entered and exited in the same
task. So each connection lives in a holder task of the app's task group; requests borrow the
client, and ``forget`` (stop, delete, death) ends the holder, which closes the connection.

Everything an agent says is hostile input (root inside a sandbox can replace its PID 1 or
answer on its socket). Whatever an agent does ends, at worst, its own connection: the holder
never lets an exception reach the app's task group, and an agent that breaks the protocol is
reported through ``on_violation`` (the sandbox service stops that sandbox and marks it
``error`` with the reason).

Each sandbox's socket must be owned by that sandbox's root on the host, which differs per
sandbox (the driver reports it as ``SandboxInfo.agent_socket_owner``): :class:`AgentSocket`
carries the path together with that uid, so a socket swapped for another one is refused.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.abc

from ..agentclient import (
    BAD_REQUEST,
    IO_ERROR,
    IS_A_DIRECTORY,
    NOT_A_DIRECTORY,
    NOT_A_FILE,
    NOT_FOUND,
    PERMISSION_DENIED,
    SPAWN_FAILED,
    TOO_MANY_REQUESTS,
    UNKNOWN_OP,
    AgentClient,
    AgentConnectionError,
    AgentError,
    AgentOperationError,
    AgentProtocolError,
    AgentRequestTooLargeError,
    AgentResponseTooLargeError,
    open_tunnel,
)
from ..agentclient._client import Opener
from ..drivers.base import AgentTunnel, SandboxInfo
from ..errors import (
    DeadlineExceededError,
    InsufficientStorageError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    SandboxUnavailableError,
    VoidRunError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
OnViolation = Callable[[str, str], None]


def _ignore_violation(sandbox_id: str, reason: str) -> None:
    log.warning("agent of %s broke the protocol: %s", sandbox_id, reason)


@dataclass(frozen=True)
class AgentSocket:
    """Where a sandbox's agent listens, and the host uid that must own that socket."""

    path: Path
    owner_uid: int | None
    tunnel: AgentTunnel | None = None
    """A sandbox on another node: connect through that node's tunnel instead."""

    @classmethod
    def of(cls, info: SandboxInfo) -> AgentSocket:
        return cls(info.agent_socket, info.agent_socket_owner, info.tunnel)

    def opener(self) -> Opener | None:
        tunnel = self.tunnel
        if tunnel is None:
            return None

        async def open_(patience: float) -> socket.socket:
            return await open_tunnel(
                tunnel.host, tunnel.port, tunnel.token, tunnel.sandbox_id, "agent", patience
            )

        return open_


# Agent refusals that mean "the request asked for something that cannot be": 400.
BAD_INPUT = frozenset(
    {BAD_REQUEST, TOO_MANY_REQUESTS, IO_ERROR, IS_A_DIRECTORY, NOT_A_DIRECTORY, NOT_A_FILE}
    | {SPAWN_FAILED}  # the image lacks the program (bash, a shell): the message names it
)
NO_SPACE = ("No space left on device", "Disk quota exceeded")


def agent_text(value: object) -> str:
    """Agent strings may carry surrogate escapes (non-UTF-8 names); JSON needs real text."""
    raw = str(value)
    try:
        return raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return raw.encode("utf-8", "replace").decode("utf-8")


def outdated_agent(exc: AgentOperationError) -> SandboxUnavailableError | None:
    if exc.code != UNKNOWN_OP:
        return None
    return SandboxUnavailableError(
        "Sandbox agent is outdated", "restart the sandbox to start this server's agent"
    )


@dataclass(frozen=True)
class Refusal:
    """The one mapping from an agent's refusal (``AgentOperationError``) to our errors. The
    contract words errors per route family, so each family names its texts:

    ``failure``: error text for anything unexpected (500), or None to treat that as bad input
    too (session-exec, CONTRACT §B.4); ``not_found``: error text for ``not_found`` (404), or None
    to treat it as bad input (a missing cwd is the caller's mistake); ``invalid``: error text for
    bad input (400, the agent's message as details), or None for the agent's message itself as
    the error. An unknown op means the sandbox still runs an older agent (502); a full disk is
    507; permission denied 403.
    """

    failure: str | None
    not_found: str | None = None
    invalid: str | None = None

    def error(self, exc: AgentOperationError) -> VoidRunError:
        message = agent_text(exc.message)
        outdated = outdated_agent(exc)
        if outdated is not None:
            return outdated
        if exc.code == NOT_FOUND and self.not_found is not None:
            return NotFoundError(self.not_found, message)
        if exc.code == PERMISSION_DENIED:
            return PermissionDeniedError("Permission denied", message)
        if any(reason in message for reason in NO_SPACE):
            return InsufficientStorageError("Sandbox disk is full", message)
        if exc.code in BAD_INPUT or exc.code == NOT_FOUND or self.failure is None:
            return (
                InvalidInputError(self.invalid, message)
                if self.invalid
                else (InvalidInputError(message))
            )
        return VoidRunError(self.failure, message)


@dataclass
class _Held:
    client: AgentClient
    release: anyio.Event = field(default_factory=anyio.Event)


async def handshake(socket: AgentSocket, within: float) -> None:
    """Prove the agent answers with one handshake on a connection of its own, closed again
    (a node daemon's create: the replica that asked opens its own connection)."""
    opener = socket.opener()
    async with AgentClient(
        socket.path, connect_timeout=within, owner_uid=socket.owner_uid, opener=opener
    ):
        pass


class AgentPool:
    def __init__(
        self,
        task_group: anyio.abc.TaskGroup,
        connect_timeout: float,
        on_violation: OnViolation = _ignore_violation,
    ) -> None:
        self._task_group = task_group
        self._connect_timeout = connect_timeout
        self._held: dict[str, _Held] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self._frozen: set[str] = set()
        self.on_violation = on_violation

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
                except AgentProtocolError as exc:
                    self.on_violation(sandbox_id, str(exc))
                    raise SandboxUnavailableError("Sandbox agent error", str(exc)) from exc
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
        refused: Refusal | None = None,
    ) -> T:
        """Run ``work`` on the sandbox's agent, reconnecting once if the connection was found
        broken. The agent's refusals (``AgentOperationError``) become ``refused``'s errors (or
        pass through unchanged without one: a caller that reports them in-band); other
        agent failures become ``SandboxUnavailableError``, a missed deadline
        ``DeadlineExceededError``, a request too large to send ``PayloadTooLargeError``.
        Anything else ``work`` raises while reading the agent's answers (a reply of the wrong
        shape) is the agent's fault, not a server error."""
        for attempt in (1, 2):
            client = await self.client(sandbox_id, socket)
            try:
                if deadline is None:  # a cancel scope costs ~15 µs per call: only when needed
                    return await work(client)
                with anyio.fail_after(deadline):
                    return await work(client)
            except AgentConnectionError as exc:
                if client.failure is not None and not isinstance(
                    client.failure, AgentConnectionError
                ):
                    self._violated(sandbox_id, client.failure)
                    raise SandboxUnavailableError("Sandbox agent error", str(exc)) from exc
                self.forget(sandbox_id)
                if attempt == 2:
                    raise SandboxUnavailableError("Sandbox agent unreachable", str(exc)) from exc
            except AgentOperationError as exc:
                if refused is None:
                    raise
                raise refused.error(exc) from exc
            except AgentRequestTooLargeError as exc:
                raise PayloadTooLargeError("Request too large for the sandbox", str(exc)) from exc
            except AgentResponseTooLargeError as exc:
                raise SandboxUnavailableError("Sandbox agent reply too large", str(exc)) from exc
            except AgentError as exc:  # protocol errors: the connection is unusable
                self._violated(sandbox_id, exc)
                raise SandboxUnavailableError("Sandbox agent error", str(exc)) from exc
            except TimeoutError:
                raise DeadlineExceededError(
                    "Sandbox agent did not answer in time", f"no reply within {deadline:g}s"
                ) from None
            except VoidRunError:
                raise
            except Exception as exc:
                log.warning("agent reply of %s could not be used", sandbox_id, exc_info=True)
                error = AgentProtocolError(f"unusable reply: {type(exc).__name__}")
                self._violated(sandbox_id, error)
                raise SandboxUnavailableError("Sandbox agent error", str(error)) from exc
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def open(
        self,
        sandbox_id: str,
        socket: AgentSocket,
        make: Callable[[AgentClient], AbstractAsyncContextManager[T]],
        *,
        deadline: float | None = None,
        refused: Refusal | None = None,
    ) -> AsyncIterator[T]:
        """Hold a streaming request (``make(client)``: an exec stream, a file read, a watch)
        open for as long as the caller's ``async with``. Entering it goes through :meth:`run`
        (reconnect once, refusals through ``refused``), so it fails before any data; what goes
        wrong while reading is the caller's to report."""

        async def enter(client: AgentClient) -> tuple[AsyncExitStack, T]:
            stack = AsyncExitStack()
            return stack, await stack.enter_async_context(make(client))

        stack, opened = await self.run(
            sandbox_id, socket, enter, deadline=deadline, refused=refused
        )
        async with stack:
            yield opened

    def _violated(self, sandbox_id: str, error: AgentError) -> None:
        self.forget(sandbox_id)
        self.on_violation(sandbox_id, str(error)[:500])

    def freeze(self, sandbox_id: str, frozen: bool) -> None:
        """Tell the sandbox's connection that its processes are (no longer) frozen, so a
        frame cut in half by the freezer is not taken for a stalled agent."""
        (self._frozen.add if frozen else self._frozen.discard)(sandbox_id)
        held = self._held.get(sandbox_id)
        if held is not None:
            held.client.freeze(frozen)

    async def connect(self, sandbox_id: str, socket: AgentSocket) -> None:
        """Prove the agent answers: a new connection's handshake is its answer (no ping
        after it: one round trip less for every create); an open one is pinged."""
        held = self._held.get(sandbox_id)
        if held is not None and not held.client.closed:
            await self.ping(sandbox_id, socket)
        else:
            await self.client(sandbox_id, socket)

    async def ping(self, sandbox_id: str, socket: AgentSocket) -> None:
        async def ping(client: AgentClient) -> None:
            await client.ping()

        await self.run(sandbox_id, socket, ping)

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
        """Owns one connection. After ``started()`` nothing may escape: an exception here
        would cancel the app's task group, i.e. every sandbox of every org."""
        held: _Held | None = None
        try:
            client_cm = AgentClient(
                socket.path,
                connect_timeout=self._connect_timeout,
                owner_uid=socket.owner_uid,
                opener=socket.opener(),
            )
            async with client_cm as client:
                client.freeze(sandbox_id in self._frozen)
                held = _Held(client)
                self._held[sandbox_id] = held
                task_status.started(client)
                async with anyio.create_task_group() as watch:
                    watch.start_soon(_release_when_closed, client, held.release)
                    await held.release.wait()
                    watch.cancel_scope.cancel()
                failure = client.failure
                if isinstance(failure, AgentProtocolError) and self._held.get(sandbox_id) is held:
                    self._violated(sandbox_id, failure)  # nobody was asking: report it here
        except Exception as exc:
            if held is None:
                raise  # before started(): the caller of client() gets it
            log.warning("agent connection of %s ended: %r", sandbox_id, exc)
        finally:
            if held is not None and self._held.get(sandbox_id) is held:
                del self._held[sandbox_id]


async def _release_when_closed(client: AgentClient, release: anyio.Event) -> None:
    await client.wait_closed()
    release.set()
