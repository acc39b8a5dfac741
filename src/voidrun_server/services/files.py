"""The files API on top of the sandbox agent's ``fs.*``/``file.*`` ops (CONTRACT §A.6).

Paths are validated and normalised here, before anything reaches the agent (which resolves
them with real syscalls inside the sandbox's mount namespace, never through a shell). Ops that
the reference server ran as shell commands answer the exec envelope: a failure of the
operation itself (missing file, not a directory...) is a result with a non-zero ``exitCode``
and a shell-style message on stderr, never an HTTP error. Transfers (list, upload, download)
map agent errors to HTTP statuses instead.

Every call makes sure the sandbox runs (auto-wake) and retries once on a fresh connection when
the shared one turns out broken — never for uploads whose body was already partly consumed.
"""

from __future__ import annotations

import math
import posixpath
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, TypeVar

from ..agentclient import (
    BAD_REQUEST,
    MAX_PAYLOAD_SIZE,
    AgentClient,
    AgentConnectionError,
    AgentOperationError,
    FileDownload,
)
from ..errors import (
    InvalidInputError,
    SandboxUnavailableError,
)
from .accounts import Principal
from .agents import Refusal, agent_text, outdated_agent
from .sandboxes import Running, SandboxService

T = TypeVar("T")
MAX_PATH = 4096
NO_SPACE = ("No space left on device", "Disk quota exceeded")


def clean_path(value: str | None, name: str = "path", default: str | None = None) -> str:
    """Absolute and collapsed; 400 for missing, NUL bytes or over 4096 characters."""
    if not value:
        if default is None:
            raise InvalidInputError(f"{name} is required")
        value = default
    if "\x00" in value:
        raise InvalidInputError(f"Invalid {name}", "must not contain NUL bytes")
    if len(value) > MAX_PATH:
        raise InvalidInputError(f"Invalid {name}", f"at most {MAX_PATH} characters")
    return "/" + posixpath.normpath("/" + value).lstrip("/")


def human_size(size: int) -> str:
    """``du -h``: powers of 1024, rounded up, one decimal below 10."""
    if size < 1024:
        return str(size)
    units = "KMGTPE"
    power = min(int(math.log(size, 1024)), len(units))
    while power > 1 and size < 1024**power:  # log() may round up at exact powers
        power -= 1
    value = size / 1024**power
    tenths = math.ceil(value * 10)
    if tenths < 100:
        return f"{tenths / 10:.1f}{units[power - 1]}"
    rounded = math.ceil(value)
    if rounded >= 1024 and power < len(units):
        return f"1.0{units[power]}"
    return f"{rounded}{units[power - 1]}"


@dataclass(frozen=True)
class ExecOutcome:
    stdout: str
    stderr: str = ""
    exit_code: int = 0


def _failed(exc: AgentOperationError) -> ExecOutcome:
    """The exec envelope of a refused op: bad requests and an outdated agent are still HTTP
    errors; the operation's own failure (missing file...) is ``exitCode`` 1 with stderr."""
    if exc.code == BAD_REQUEST:
        raise InvalidInputError("Invalid request", agent_text(exc.message))
    outdated = outdated_agent(exc)
    if outdated is not None:
        raise outdated
    return ExecOutcome("", agent_text(exc.message).rstrip("\n") + "\n", 1)


# list, upload, download and watch have no exec envelope to report in: HTTP errors.
TRANSFER_REFUSED = Refusal(
    failure="File operation failed", not_found="Path not found", invalid="Invalid path"
)
DOWNLOAD_REFUSED = Refusal(
    failure="File operation failed", not_found="File not found", invalid="Invalid path"
)


class FileService:
    def __init__(self, sandboxes: SandboxService) -> None:
        self.sandboxes = sandboxes

    async def _with_agent(
        self,
        running: Running,
        work: Callable[[AgentClient], Awaitable[T]],
        refused: Refusal | None = None,
    ) -> T:
        return await self.sandboxes.agents.run(
            running.row.id, running.agent_socket, work, refused=refused
        )

    async def call(
        self,
        caller: Principal,
        sandbox_id: str,
        op: str,
        args: dict[str, Any],
        refused: Refusal | None = None,
    ) -> tuple[dict[str, Any], list[Any], bytes]:
        running = await self.sandboxes.ensure_running(caller, sandbox_id)
        return await self._with_agent(running, lambda agent: agent.fs_call(op, args), refused)

    async def run(
        self,
        caller: Principal,
        sandbox_id: str,
        op: str,
        args: dict[str, Any],
        render: Callable[[dict[str, Any], bytes], ExecOutcome] | None = None,
    ) -> ExecOutcome:
        """An exec-envelope op: the agent's refusal becomes ``exitCode`` 1 and stderr."""
        try:
            body, _, out = await self.call(caller, sandbox_id, op, args)
        except AgentOperationError as exc:
            return _failed(exc)
        return render(body, out) if render else ExecOutcome("")

    async def create(
        self, caller: Principal, sandbox_id: str, path: str, content: bytes | None
    ) -> ExecOutcome:
        """``touch`` (keeping existing data) or, with content, an atomic write of it."""
        if content is None:
            return await self.run(caller, sandbox_id, "fs.touch", {"path": path})
        running = await self.sandboxes.ensure_running(caller, sandbox_id)
        try:
            await self._with_agent(running, lambda agent: agent.write_file(path, content))
        except AgentOperationError as exc:
            outdated = outdated_agent(exc)
            if outdated is not None:
                raise outdated from exc
            return ExecOutcome("", f"create: {agent_text(exc.message)}\n", 1)
        return ExecOutcome("")

    async def list(self, caller: Principal, sandbox_id: str, path: str) -> list[Any]:
        _, items, _ = await self.call(
            caller, sandbox_id, "fs.list", {"path": path}, TRANSFER_REFUSED
        )
        return items

    async def path_exists(self, caller: Principal, sandbox_id: str, path: str) -> None:
        await self.call(caller, sandbox_id, "fs.stat", {"path": path}, TRANSFER_REFUSED)

    async def upload(
        self, caller: Principal, sandbox_id: str, path: str, chunks: AsyncIterator[bytes]
    ) -> int:
        """Stream ``chunks`` into ``path`` (atomic on the agent side); returns the size.

        Chunks are regrouped into frame-sized pieces; the agent's flow control stops us
        reading the request (and so the client sending) while the sandbox disk catches up.
        """
        running = await self.sandboxes.ensure_running(caller, sandbox_id)
        self.sandboxes.disk_floor.check_upload()  # 507 when the host itself is nearly full
        started = False

        async def pieces() -> AsyncIterator[bytes]:
            nonlocal started
            buffer = bytearray()
            async for chunk in chunks:
                started = True
                if not buffer and len(chunk) >= MAX_PAYLOAD_SIZE:
                    yield chunk  # already frame-sized: no copy
                    continue
                buffer += chunk
                if len(buffer) >= MAX_PAYLOAD_SIZE:
                    yield bytes(buffer)
                    buffer.clear()
            yield bytes(buffer)

        async def work(agent: AgentClient) -> int:
            try:
                return await agent.write_file(path, pieces())
            except AgentConnectionError as exc:
                if not started:
                    raise  # nothing consumed yet: retried on a fresh connection
                self.sandboxes.agents.forget(sandbox_id)
                raise SandboxUnavailableError("Sandbox agent unreachable", str(exc)) from exc

        return await self._with_agent(running, work, TRANSFER_REFUSED)

    async def open_download(self, caller: Principal, sandbox_id: str, path: str) -> FileDownload:
        """An entered download (size known); the caller must ``__aexit__`` it."""
        running = await self.sandboxes.ensure_running(caller, sandbox_id)

        async def work(agent: AgentClient) -> FileDownload:
            download = agent.read_file(path)
            await download.__aenter__()
            return download

        return await self._with_agent(running, work, DOWNLOAD_REFUSED)

    async def open_watch(
        self,
        stack: AsyncExitStack,
        caller: Principal,
        sandbox_id: str,
        path: str,
        *,
        recursive: bool,
        ignore_hidden: bool,
    ) -> AsyncIterator[dict[str, Any]]:
        """Start the agent's watch (entered on ``stack``); events flow once this returns."""
        running = await self.sandboxes.ensure_running(caller, sandbox_id)

        async def work(agent: AgentClient) -> AsyncIterator[dict[str, Any]]:
            watch = agent.watch(path, recursive=recursive, ignore_hidden=ignore_hidden)
            return await stack.enter_async_context(watch)

        return await self._with_agent(running, work, TRANSFER_REFUSED)
