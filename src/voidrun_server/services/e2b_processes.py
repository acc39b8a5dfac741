"""envd's ``process.Process`` on our agent (``api/e2b/process.py`` speaks the wire).

A process without a PTY is one of our background commands (``agent/commands.py``): its pid is
the agent's, its output is kept in the agent's ring and followed with ``cmd.attach`` (so a
second client that connects sees it from the oldest byte kept), stdin is a pipe (closed at
once unless the caller asked for stdin). SIGTERM and SIGKILL both kill its process group.

A process with a PTY is one of our terminals (``agent/pty.py``): the user's login shell at the
requested size. Terminals have session ids, not pids, so each gets a pid here, above any
kernel pid (``PTY_PIDS``). Tags, and the command lines ``List`` reports, are remembered by this
server process (``ProcessTable``); a restart forgets them (the processes keep running).
"""

from __future__ import annotations

import itertools
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from ..agentclient import AgentOperationError, ProcessOps
from ..errors import NotFoundError
from . import validation
from .accounts import Principal
from .agents import Refusal
from .commands import AGENT_DEADLINE, AgentCalls, LiveStream
from .image_user import requested_user
from .sandboxes import Running, SandboxService

PTY_PIDS = 1 << 30  # kernel pids stay below 2**22
MAX_TAG_CHARS = 256
MAX_REMEMBERED = 1000  # per sandbox; the oldest are forgotten past it
MAX_SANDBOXES = 10_000  # sandboxes remembered; the first seen are forgotten past it

_Work = Callable[[ProcessOps], Awaitable[object]]
REFUSED = Refusal(failure="Process operation failed", not_found="Process not found")
START_REFUSED = Refusal(failure="Failed to start process", invalid="Failed to start process")


@dataclass
class Spawned:
    pid: int
    cmd: str
    args: list[str] = field(default_factory=list)
    envs: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    tag: str | None = None
    terminal: str | None = None  # the agent's PTY session id


@dataclass(frozen=True)
class StartSpec:
    cmd: str
    args: list[str]
    envs: dict[str, str]
    cwd: str | None
    tag: str | None
    stdin: bool
    user: str | None
    pty: tuple[int, int] | None  # cols, rows


class ProcessTable:
    """What this server remembers of the processes it started, per sandbox."""

    def __init__(self) -> None:
        self._sandboxes: dict[str, dict[int, Spawned]] = {}
        self._pty_pids = itertools.count(PTY_PIDS)

    def add(self, sandbox_id: str, spawned: Spawned) -> None:
        if sandbox_id not in self._sandboxes and len(self._sandboxes) >= MAX_SANDBOXES:
            del self._sandboxes[next(iter(self._sandboxes))]  # the longest known
        known = self._sandboxes.setdefault(sandbox_id, {})
        known[spawned.pid] = spawned
        while len(known) > MAX_REMEMBERED:
            del known[next(iter(known))]

    def pty_pid(self) -> int:
        return next(self._pty_pids)

    def get(self, sandbox_id: str, pid: int) -> Spawned | None:
        return self._sandboxes.get(sandbox_id, {}).get(pid)

    def by_tag(self, sandbox_id: str, tag: str) -> Spawned | None:
        for spawned in reversed(self._sandboxes.get(sandbox_id, {}).values()):
            if spawned.tag == tag:
                return spawned
        return None

    def terminals(self, sandbox_id: str) -> dict[str, Spawned]:
        known = self._sandboxes.get(sandbox_id, {}).values()
        return {s.terminal: s for s in known if s.terminal is not None}


class E2BProcesses:
    def __init__(self, sandboxes: SandboxService, table: ProcessTable) -> None:
        self.calls = AgentCalls(sandboxes)
        self.table = table

    async def start(self, caller: Principal, sandbox_id: str, spec: StartSpec) -> Spawned:
        command = validation.command_text(shlex.join([spec.cmd, *spec.args]))
        envs = validation.command_env(spec.envs)
        cwd = validation.command_cwd(spec.cwd, absolute=True)
        if spec.tag is not None and len(spec.tag) > MAX_TAG_CHARS:
            raise validation.invalid(f"tag: at most {MAX_TAG_CHARS} characters")
        wanted = requested_user(spec.user)
        running = await self.calls.running(caller, sandbox_id)
        cwd = cwd or running.row.workdir  # the image's WorkingDir, as for our commands
        users = self.calls.sandboxes.image_users
        user = await users.effective(running.row, wanted)
        spawned = Spawned(0, spec.cmd, list(spec.args), envs, cwd, spec.tag)
        if spec.pty is not None:
            cols, rows = spec.pty
            info = await self.calls.on(
                running, lambda p: p.pty_create(cols, rows, user), refused=START_REFUSED
            )
            spawned.pid, spawned.terminal = self.table.pty_pid(), info.id
        else:

            async def run(procs: ProcessOps) -> int:
                info = await procs.run_command(command, env=envs, cwd=cwd or None, user=user)
                if not spec.stdin:
                    try:
                        await procs.write_stdin(info.pid, "", eof=True)
                    except AgentOperationError:
                        pass  # it exited already
                return info.pid

            spawned.pid = await self.calls.on(running, run, AGENT_DEADLINE, START_REFUSED)
        self.table.add(sandbox_id, spawned)
        return spawned

    def select(self, sandbox_id: str, pid: int | None, tag: str | None) -> Spawned:
        """By pid (ours or any background command's) or by tag."""
        if tag is not None:
            found = self.table.by_tag(sandbox_id, tag)
            if found is None:
                raise NotFoundError(f"Process with tag {tag} not found")
            return found
        if pid is None:
            raise validation.invalid("process: give a pid or a tag")
        return self.table.get(sandbox_id, pid) or Spawned(pid, "")

    @asynccontextmanager
    async def follow(
        self, caller: Principal, sandbox_id: str, spawned: Spawned
    ) -> AsyncIterator[LiveStream]:
        """Its output (a terminal's as channel stdout) until it exits; leaving detaches."""
        running = await self.calls.running(caller, sandbox_id)
        terminal = spawned.terminal
        async with self.calls.open(
            running,
            (lambda p: p.pty_attach(terminal))
            if terminal is not None
            else (lambda p: p.attach_command(spawned.pid)),
            REFUSED,
        ) as live:
            yield live

    async def list(self, caller: Principal, sandbox_id: str) -> list[Spawned]:
        running = await self.calls.running(caller, sandbox_id)
        commands = await self.calls.on(running, lambda p: p.list_commands(), refused=REFUSED)
        terminals = await self.calls.on(running, lambda p: p.pty_list(), refused=REFUSED)
        found: list[Spawned] = []
        for process in commands:
            if process.running:
                known = self.table.get(sandbox_id, process.pid)
                found.append(known or Spawned(process.pid, "/bin/sh", ["-c", process.command]))
        ours = self.table.terminals(sandbox_id)
        for terminal in terminals:
            if terminal.alive and terminal.id in ours:
                found.append(ours[terminal.id])
        return found

    async def kill(self, caller: Principal, sandbox_id: str, spawned: Spawned) -> None:
        """Not found when it is not running (any more), as envd answers."""
        terminal = spawned.terminal
        if terminal is not None:
            await self._on(caller, sandbox_id, lambda p: p.pty_close(terminal))
            return

        async def kill(procs: ProcessOps) -> None:
            running = {c.pid for c in await procs.list_commands() if c.running}
            if spawned.pid not in running:
                raise NotFoundError("Process not found", f"no running process {spawned.pid}")
            await procs.kill_command(spawned.pid)

        await self._on(caller, sandbox_id, kill)

    async def write(
        self, caller: Principal, sandbox_id: str, spawned: Spawned, data: bytes, eof: bool = False
    ) -> None:
        text = data.decode("utf-8", "replace")
        terminal = spawned.terminal
        if terminal is not None:
            if text:
                await self._on(caller, sandbox_id, lambda p: p.pty_input(terminal, text))
            return
        await self._on(caller, sandbox_id, lambda p: p.write_stdin(spawned.pid, text, eof=eof))

    async def resize(
        self, caller: Principal, sandbox_id: str, spawned: Spawned, cols: int, rows: int
    ) -> None:
        terminal = spawned.terminal
        if terminal is None:
            if self.table.get(sandbox_id, spawned.pid) is None:
                raise NotFoundError("Process not found", f"no process {spawned.pid}")
            raise validation.invalid("the process has no PTY")
        if not (1 <= cols <= 1000 and 1 <= rows <= 1000):
            raise validation.invalid("pty size: cols and rows 1..1000")
        await self._on(caller, sandbox_id, lambda p: p.pty_resize(terminal, cols, rows))

    async def _on(self, caller: Principal, sandbox_id: str, work: _Work) -> None:
        running: Running = await self.calls.running(caller, sandbox_id)
        await self.calls.on(running, work, refused=REFUSED)
