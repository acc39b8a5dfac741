"""envd's ``filesystem.Filesystem`` and ``/files`` on our agent's ``fs.*`` and file ops
(``api/e2b/filesystem.py`` and ``api/e2b/files.py`` speak the wire).

Relative paths are taken from the user's home (``/root`` for root, else ``/home/<user>``), as
envd does. Listings recurse here (``depth``), one agent listing per directory. A watch is the
agent's inotify watch; the polling watchers (``CreateWatcher`` …) keep one open in a background
task and buffer its events until polled (``Watchers``), for at most ``WATCHER_IDLE`` seconds
without a poll.
"""

from __future__ import annotations

import logging
import posixpath
import secrets
import stat
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio

from ..agentclient import AgentClient, AgentOperationError
from ..errors import ConflictError, InvalidInputError, NotFoundError, VoidRunError
from . import file_args as check
from .accounts import Principal
from .agents import Refusal
from .file_watches import WatchRegistry
from .files import Download, FileService
from .sandboxes import SandboxService

log = logging.getLogger(__name__)
T = TypeVar("T")
REFUSED = Refusal(
    failure="File operation failed", not_found="Path not found", invalid="Invalid path"
)
MAX_DEPTH = 16
MAX_ENTRIES = 50_000
MAX_WATCHERS = 64  # per sandbox
MAX_BUFFERED = 10_000  # events per watcher; the oldest are dropped past it
WATCHER_IDLE = 300.0

KINDS = {"directory": "dir", "regular file": "file", "symbolic link": "symlink"}


@dataclass(frozen=True)
class Entry:
    name: str
    path: str
    kind: str  # file, dir, symlink, other
    size: int
    mode: int
    mtime: float


@dataclass(frozen=True)
class Event:
    name: str  # relative to the watched directory
    kind: str  # create, write, remove, rename, chmod


def home_of(user: str | None) -> str:
    name = (user or "root").split(":", 1)[0]
    return "/root" if name in ("root", "0") else f"/home/{name}"


def resolve(path: str, user: str | None) -> str:
    """Absolute (relative to the user's home) and collapsed."""
    if not path:
        raise InvalidInputError("path is required")
    if not path.startswith("/"):
        path = posixpath.join(home_of(user), path)
    return check.clean_path(path)


def _kind_of_mode(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "file" if stat.S_ISREG(mode) else "other"


def _entry(item: dict[str, Any]) -> Entry:
    path = str(item.get("path", ""))
    mode = int(item.get("mode", 0))
    return Entry(
        name=posixpath.basename(path) or "/",
        path=path,
        kind=_kind_of_mode(mode) if mode else KINDS.get(str(item.get("type")), "other"),
        size=int(item.get("size", 0)),
        mode=mode,
        mtime=float(item.get("mtime", 0)),
    )


_EVENT_KINDS = {
    "created": "create",
    "modified": "write",
    "deleted": "remove",
    "renamed": "rename",
    "chmod": "chmod",
}


def events_of(root: str, event: dict[str, Any]) -> list[Event]:
    """One agent FileEvent as envd reports it (a rename: the old name, then the new one
    created)."""

    def rel(path: str) -> str:
        return posixpath.relpath(path, root) if path.startswith(root) else path

    kind = _EVENT_KINDS.get(str(event.get("type")))
    path = str(event.get("path", ""))
    if kind is None or not path:
        return []
    if kind == "rename":
        old = str(event.get("oldPath") or path)
        return [Event(rel(old), "rename"), Event(rel(path), "create")]
    return [Event(rel(path), kind)]


@dataclass
class Watcher:
    org_id: str
    sandbox_id: str
    root: str
    events: deque[Event] = field(default_factory=lambda: deque(maxlen=MAX_BUFFERED))
    polled: float = 0.0
    stop: anyio.Event = field(default_factory=anyio.Event)
    failure: VoidRunError | None = None


class E2BFiles:
    def __init__(self, sandboxes: SandboxService, watchers: dict[str, Watcher]) -> None:
        self.sandboxes = sandboxes
        self.watchers = watchers

    async def absolute(
        self, caller: Principal, sandbox_id: str, path: str, user: str | None
    ) -> str:
        """``path`` made absolute: relative ones from the home of ``user`` (default: the
        image's user)."""
        if path.startswith("/"):
            return check.clean_path(path)
        if user is None:
            running = await self.sandboxes.ensure_running(caller, sandbox_id)
            user = await self.sandboxes.image_users.default(running.row)
        return resolve(path, user)

    async def upload(
        self, caller: Principal, sandbox_id: str, path: str, chunks: AsyncIterator[bytes]
    ) -> Entry:
        target = check.file_target(path)
        await FileService(self.sandboxes, WatchRegistry()).upload(
            caller, sandbox_id, target, chunks
        )
        return await self.stat(caller, sandbox_id, target)

    @asynccontextmanager
    async def download(
        self, caller: Principal, sandbox_id: str, path: str
    ) -> AsyncIterator[Download]:
        files = FileService(self.sandboxes, WatchRegistry())
        async with files.download(caller, sandbox_id, path) as opened:
            yield opened

    async def stat(self, caller: Principal, sandbox_id: str, path: str) -> Entry:
        body, _, _ = await self._fs(caller, sandbox_id, "fs.stat", {"path": path})
        return _entry(body)

    async def exists(self, caller: Principal, sandbox_id: str, path: str) -> bool:
        try:
            await self.stat(caller, sandbox_id, path)
        except NotFoundError:
            return False
        return True

    async def make_dir(self, caller: Principal, sandbox_id: str, path: str) -> Entry:
        if await self.exists(caller, sandbox_id, path):
            raise ConflictError("Path already exists", path)
        await self._fs(caller, sandbox_id, "fs.mkdir", {"path": path})
        return await self.stat(caller, sandbox_id, path)

    async def move(self, caller: Principal, sandbox_id: str, source: str, target: str) -> Entry:
        await self._fs(caller, sandbox_id, "fs.move", {"from": source, "to": target})
        return await self.stat(caller, sandbox_id, target)

    async def remove(self, caller: Principal, sandbox_id: str, path: str) -> None:
        await self.stat(caller, sandbox_id, path)  # a missing path is not found, as in envd
        await self._fs(caller, sandbox_id, "fs.delete", {"path": path})

    async def list_dir(
        self, caller: Principal, sandbox_id: str, path: str, depth: int
    ) -> list[Entry]:
        if not 1 <= depth <= MAX_DEPTH:
            raise InvalidInputError("Invalid depth", f"1..{MAX_DEPTH}")
        root = await self.stat(caller, sandbox_id, path)
        if root.kind != "dir":
            raise InvalidInputError("Path is not a directory", path)
        found: list[Entry] = []
        level = [path]
        for _ in range(depth):
            below: list[str] = []
            for directory in level:
                _, items, _ = await self._fs(caller, sandbox_id, "fs.list", {"path": directory})
                for item in items:
                    entry = _entry(item)
                    found.append(entry)
                    if entry.kind == "dir":
                        below.append(entry.path)
                if len(found) > MAX_ENTRIES:
                    raise InvalidInputError("Too many entries", f"more than {MAX_ENTRIES}")
            level = below
        return found

    # -- watches -----------------------------------------------------------------------------

    @asynccontextmanager
    async def watch(
        self, caller: Principal, sandbox_id: str, path: str, recursive: bool
    ) -> AsyncIterator[AsyncIterator[Event]]:
        """In place (or refused) before this yields; events until the root disappears."""
        root = await self.stat(caller, sandbox_id, path)
        if root.kind != "dir":
            raise InvalidInputError("Path is not a directory", path)
        running = await self.sandboxes.ensure_running(caller, sandbox_id)
        async with self.sandboxes.agents.open(
            running.row.id,
            running.agent_socket,
            lambda agent: agent.watch(path, recursive=recursive, ignore_hidden=False),
            refused=REFUSED,
        ) as raw:

            async def events() -> AsyncIterator[Event]:
                async for item in raw:
                    for event in events_of(path, item):
                        yield event

            yield events()

    async def create_watcher(
        self, caller: Principal, sandbox_id: str, path: str, recursive: bool
    ) -> str:
        ours = [w for w in self.watchers.values() if w.sandbox_id == sandbox_id]
        if len(ours) >= MAX_WATCHERS:
            raise InvalidInputError("Too many watchers", f"at most {MAX_WATCHERS} per sandbox")
        watcher = Watcher(caller.org_id, sandbox_id, path, polled=anyio.current_time())
        ready = anyio.Event()
        watcher_id = secrets.token_hex(12)

        async def keep() -> None:
            try:
                async with self.watch(caller, sandbox_id, path, recursive) as events:
                    ready.set()
                    async with anyio.create_task_group() as tasks:
                        tasks.start_soon(self._expire, watcher, tasks.cancel_scope)
                        async for event in events:
                            watcher.events.append(event)
                        tasks.cancel_scope.cancel()
            except VoidRunError as exc:
                watcher.failure = exc
            except Exception as exc:  # the watcher ends; its poller hears why
                log.warning("watcher %s ended: %s", watcher_id, exc)
                watcher.failure = VoidRunError("Watcher ended", str(exc))
            finally:
                ready.set()
                watcher.stop.set()
                if anyio.current_time() - watcher.polled > WATCHER_IDLE:
                    self.watchers.pop(watcher_id, None)  # abandoned: nobody will poll it

        self.watchers[watcher_id] = watcher
        self.sandboxes.spawn(keep)
        await ready.wait()
        if watcher.failure is not None:
            self.watchers.pop(watcher_id, None)
            raise watcher.failure
        return watcher_id

    async def _expire(self, watcher: Watcher, scope: anyio.CancelScope) -> None:
        while True:
            with anyio.move_on_after(WATCHER_IDLE / 4):
                await watcher.stop.wait()
                scope.cancel()
                return
            if anyio.current_time() - watcher.polled > WATCHER_IDLE:
                scope.cancel()
                return

    def watcher_events(self, caller: Principal, sandbox_id: str, watcher_id: str) -> list[Event]:
        watcher = self._watcher(caller, sandbox_id, watcher_id)
        watcher.polled = anyio.current_time()
        events = list(watcher.events)
        watcher.events.clear()
        if not events and watcher.stop.is_set():
            self.watchers.pop(watcher_id, None)
            raise watcher.failure or NotFoundError("Watcher ended", "its directory is gone")
        return events

    def remove_watcher(self, caller: Principal, sandbox_id: str, watcher_id: str) -> None:
        watcher = self._watcher(caller, sandbox_id, watcher_id)
        watcher.stop.set()
        self.watchers.pop(watcher_id, None)

    def _watcher(self, caller: Principal, sandbox_id: str, watcher_id: str) -> Watcher:
        watcher = self.watchers.get(watcher_id)
        if watcher is None or watcher.org_id != caller.org_id or watcher.sandbox_id != sandbox_id:
            raise NotFoundError("Watcher not found", watcher_id)
        return watcher

    # -- plumbing ----------------------------------------------------------------------------

    async def _fs(
        self, caller: Principal, sandbox_id: str, op: str, args: dict[str, Any]
    ) -> tuple[dict[str, Any], list[Any], bytes]:
        return await self.with_agent(caller, sandbox_id, lambda agent: agent.fs_call(op, args))

    async def with_agent(
        self, caller: Principal, sandbox_id: str, work: Callable[[AgentClient], Awaitable[T]]
    ) -> T:
        running = await self.sandboxes.ensure_running(caller, sandbox_id)
        try:
            return await self.sandboxes.agents.run(
                running.row.id, running.agent_socket, work, refused=REFUSED
            )
        except AgentOperationError as exc:  # not mapped by the refusal (defensive)
            raise REFUSED.error(exc) from exc
