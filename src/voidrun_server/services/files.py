"""The files API on top of the sandbox agent's ``fs.*``/``file.*`` ops (CONTRACT §A.6, §B.6).

One method per route (whose docstring says what it does). Each checks its arguments first
(``file_args.py``: every problem there is a 400 before the sandbox is touched), then asks the
agent. Ops that the reference server ran as shell commands answer the exec envelope
(``file_results.py``): the agent's refusal is an ``exitCode`` with stderr, never an HTTP error.
Transfers (list, upload, download, watch) map agent errors to HTTP statuses instead.

Every call makes sure the sandbox runs (auto-wake) and retries once on a fresh connection when
the shared one turns out broken — never for uploads whose body was already partly consumed.
Downloads and watches are context managers: the route holds them open (``api/streams.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from ..agentclient import (
    MAX_PAYLOAD_SIZE,
    AgentClient,
    AgentConnectionError,
    AgentOperationError,
)
from ..errors import SandboxUnavailableError
from ..schemas.files import FileInfo, WatchRequest
from . import file_args as check
from . import file_results as results
from .accounts import Principal
from .agents import Refusal, agent_text, outdated_agent
from .file_results import ExecOutcome, Render
from .file_watches import WatchTicket, WatchTickets
from .sandboxes import Running, SandboxService

T = TypeVar("T")


# list, upload, download and watch have no exec envelope to report in: HTTP errors.
TRANSFER_REFUSED = Refusal(
    failure="File operation failed", not_found="Path not found", invalid="Invalid path"
)
DOWNLOAD_REFUSED = Refusal(
    failure="File operation failed", not_found="File not found", invalid="Invalid path"
)


@dataclass(frozen=True)
class Download:
    """An open file read: its (clean) path, its size at opening, and exactly that many bytes
    (never more, even if the file grew meanwhile)."""

    path: str
    size: int
    chunks: AsyncIterator[bytes]


async def _at_most(chunks: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    remaining = size
    async for chunk in chunks:
        if len(chunk) >= remaining:
            yield chunk[:remaining]
            return
        remaining -= len(chunk)
        yield chunk


class FileService:
    def __init__(self, sandboxes: SandboxService, watches: WatchTickets) -> None:
        self.sandboxes = sandboxes
        self.watches = watches

    # -- exec-envelope ops -------------------------------------------------------------------

    async def delete(self, caller: Principal, sandbox_id: str, path: str | None) -> ExecOutcome:
        return await self._run(caller, sandbox_id, "fs.delete", {"path": check.clean_path(path)})

    async def head_tail(
        self,
        caller: Principal,
        sandbox_id: str,
        path: str | None,
        lines: str | None,
        head: str | None,
    ) -> ExecOutcome:
        """The first (``head`` absent or ``true``) or last ``lines`` lines."""
        target, count = check.clean_path(path), check.line_count(lines)
        args = {"path": target, "lines": count, "head": head in (None, "true")}
        return await self._run(caller, sandbox_id, "fs.headtail", args, results.head_tail)

    async def search(
        self, caller: Principal, sandbox_id: str, path: str | None, pattern: str | None
    ) -> ExecOutcome:
        found = check.search_pattern(pattern)
        args = {"path": check.clean_path(path, default="/root"), "pattern": found}
        return await self._run(caller, sandbox_id, "fs.search", args, results.found_paths)

    async def mkdir(self, caller: Principal, sandbox_id: str, path: str | None) -> ExecOutcome:
        return await self._run(caller, sandbox_id, "fs.mkdir", {"path": check.clean_path(path)})

    async def create(
        self,
        caller: Principal,
        sandbox_id: str,
        path: str | None,
        content: str | None,
        body: Callable[[], Awaitable[bytes]],
        content_type: str,
    ) -> ExecOutcome:
        """``touch`` (keeping existing data) or, with content (``content`` or the request
        body, see ``file_args.created_content``), an atomic write of it."""
        target = check.clean_path(path)
        data = check.created_content(content, content_type, await body())
        if data is None:
            return await self._run(caller, sandbox_id, "fs.touch", {"path": target})
        running = await self.sandboxes.ensure_running(caller, sandbox_id)
        try:
            await self._with_agent(running, lambda agent: agent.write_file(target, data))
        except AgentOperationError as exc:
            outdated = outdated_agent(exc)
            if outdated is not None:
                raise outdated from exc
            return ExecOutcome("", f"create: {agent_text(exc.message)}\n", 1)
        return ExecOutcome("")

    async def copy(
        self, caller: Principal, sandbox_id: str, source: str | None, target: str | None
    ) -> ExecOutcome:
        return await self._from_to(caller, sandbox_id, "fs.copy", source, target)

    async def move(
        self, caller: Principal, sandbox_id: str, source: str | None, target: str | None
    ) -> ExecOutcome:
        return await self._from_to(caller, sandbox_id, "fs.move", source, target)

    async def chmod(
        self, caller: Principal, sandbox_id: str, path: str | None, mode: str | None
    ) -> ExecOutcome:
        args = {"path": check.clean_path(path), "mode": check.file_mode(mode)}
        return await self._run(caller, sandbox_id, "fs.chmod", args)

    async def stat(self, caller: Principal, sandbox_id: str, path: str | None) -> ExecOutcome:
        args = {"path": check.clean_path(path)}
        return await self._run(caller, sandbox_id, "fs.stat", args, results.stat_line)

    async def disk_usage(self, caller: Principal, sandbox_id: str, path: str | None) -> ExecOutcome:
        target = check.clean_path(path, default="/root")
        render = results.disk_usage_of(target)
        return await self._run(caller, sandbox_id, "fs.du", {"path": target}, render)

    async def compress(
        self, caller: Principal, sandbox_id: str, path: str | None, fmt: str | None
    ) -> ExecOutcome:
        args = {"path": check.clean_path(path), "format": check.archive_format(fmt)}
        return await self._run(caller, sandbox_id, "fs.compress", args)

    async def extract(
        self, caller: Principal, sandbox_id: str, archive: str | None, dest: str | None
    ) -> ExecOutcome:
        source = check.archive_path(archive)
        target = check.clean_path(dest, "dest", default=source.rsplit("/", 1)[0])
        args = {"archive": source, "dest": target}
        return await self._run(caller, sandbox_id, "fs.extract", args, results.extract_problems)

    # -- transfers ---------------------------------------------------------------------------

    async def list_dir(
        self, caller: Principal, sandbox_id: str, path: str | None
    ) -> list[FileInfo]:
        args = {"path": check.clean_path(path, default="/root")}
        _, items, _ = await self._call(caller, sandbox_id, "fs.list", args, TRANSFER_REFUSED)
        return [results.file_info(item) for item in items]

    async def upload(
        self, caller: Principal, sandbox_id: str, path: str, chunks: AsyncIterator[bytes]
    ) -> int:
        """Stream ``chunks`` into ``path`` (clean, see ``file_args.file_target``; atomic on
        the agent side); returns the size.

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

    @asynccontextmanager
    async def download(
        self, caller: Principal, sandbox_id: str, path: str | None
    ) -> AsyncIterator[Download]:
        """The file, open (its size known) while the context lasts."""
        target = check.clean_path(path)
        running = await self.sandboxes.ensure_running(caller, sandbox_id)
        async with self.sandboxes.agents.open(
            running.row.id,
            running.agent_socket,
            lambda agent: agent.read_file(target),
            refused=DOWNLOAD_REFUSED,
        ) as opened:
            yield Download(target, opened.size, _at_most(opened, opened.size))

    async def start_watch(self, caller: Principal, sandbox_id: str, body: WatchRequest) -> str:
        """Check the path and hand out a watch session id (``file_watches.py``)."""
        path = check.clean_path(body.path)
        await self._call(caller, sandbox_id, "fs.stat", {"path": path}, TRANSFER_REFUSED)
        ticket = WatchTicket(
            org_id=caller.org_id,
            sandbox_id=sandbox_id,
            path=path,
            recursive=body.recursive is True,
            ignore_hidden=body.ignore_hidden is not False,
        )
        return await self.watches.add(ticket)

    async def claim_watch(self, session_id: str, caller: Principal, sandbox_id: str) -> WatchTicket:
        return await self.watches.claim(session_id, caller, sandbox_id)

    @asynccontextmanager
    async def watch(
        self, caller: Principal, ticket: WatchTicket
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """The agent's watch, in place before this yields; events flow while it lasts."""
        running = await self.sandboxes.ensure_running(caller, ticket.sandbox_id)
        async with self.sandboxes.agents.open(
            running.row.id,
            running.agent_socket,
            lambda agent: agent.watch(
                ticket.path, recursive=ticket.recursive, ignore_hidden=ticket.ignore_hidden
            ),
            refused=TRANSFER_REFUSED,
        ) as events:
            yield events

    # -- plumbing ----------------------------------------------------------------------------

    async def _with_agent(
        self,
        running: Running,
        work: Callable[[AgentClient], Awaitable[T]],
        refused: Refusal | None = None,
    ) -> T:
        return await self.sandboxes.agents.run(
            running.row.id, running.agent_socket, work, refused=refused
        )

    async def _call(
        self,
        caller: Principal,
        sandbox_id: str,
        op: str,
        args: dict[str, Any],
        refused: Refusal | None = None,
    ) -> tuple[dict[str, Any], list[Any], bytes]:
        running = await self.sandboxes.ensure_running(caller, sandbox_id)
        return await self._with_agent(running, lambda agent: agent.fs_call(op, args), refused)

    async def _run(
        self,
        caller: Principal,
        sandbox_id: str,
        op: str,
        args: dict[str, Any],
        render: Render = results.nothing,
    ) -> ExecOutcome:
        """An exec-envelope op: the agent's refusal becomes ``exitCode`` 1 and stderr."""
        try:
            body, _, out = await self._call(caller, sandbox_id, op, args)
        except AgentOperationError as exc:
            return results.refused(exc)
        return render(body, out)

    async def _from_to(
        self, caller: Principal, sandbox_id: str, op: str, source: str | None, target: str | None
    ) -> ExecOutcome:
        origin, destination = check.from_to(source, target)
        return await self._run(caller, sandbox_id, op, {"from": origin, "to": destination})
