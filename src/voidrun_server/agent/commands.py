"""Background commands: ``cmd.run`` returns at once, the command outlives its request.

``process.run`` ties a command to its request (a cancelled request kills it). Here a command
belongs to the agent instead: output goes into a bounded :class:`Ring` (the pipes are always
drained, so the child never blocks on a full pipe however nobody reads), and the exit code stays
around after exit for ``cmd.wait``, ``cmd.list`` and a late ``cmd.attach``. Like ``exec``, each
command leads its own process group and is killed as a group.

Ops::

    cmd.run     {command, env?, cwd?, timeout?}  -> res {pid, command, startTime}
    cmd.list    {}                               -> res {processes: [{pid, command, startTime,
                                                         running, exitCode?, timedOut}]}
    cmd.kill    {pid}                            -> res {}            (SIGKILL to the group)
    cmd.wait    {pid}                            -> res {exitCode, timedOut}
    cmd.attach  {pid}  -> head {pid}, data "stdout"/"stderr" from the first byte kept, live
                          until exit, then res {exitCode, timedOut, dropped}
    cmd.stdin   {pid, data, eof?}                -> res {}

``startTime`` is epoch seconds. Unknown pids are ``not_found``. ``dropped`` counts bytes the
attach missed because the ring had already discarded them.
"""

from __future__ import annotations

import time

from .args import bad
from .context import AgentContext, kill_group
from .fdio import Fd, Reader, WriteBuffer
from .futures import Future
from .process import TIMEOUT_EXIT_CODE, Command, start
from .protocol import (
    IO_ERROR,
    NOT_FOUND,
    TOO_MANY_REQUESTS,
    OpError,
    is_int,
)
from .reaper import exit_code
from .ring import Ring
from .sync import Event
from .tasks import Task, wait

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, Optional

    from .stream import Stream

RING_BYTES = 2 * 1024 * 1024  # both channels of one command together
MAX_EXITED = 100  # exited commands remembered for list/wait/attach
MAX_RUNNING = 256
# After the leader exits, how long to wait for its pipes to reach EOF. A background child that
# still holds them keeps writing into the ring, but the command counts as exited.
EOF_GRACE = 1.0
STDIN_LIMIT = 1024 * 1024  # bytes queued for a child that does not read its stdin


class Background:
    def __init__(self, pid: int, command: str) -> None:
        self.pid = pid
        self.command = command
        self.started = time.time()
        self.ring = Ring(RING_BYTES)
        self.exit_code: Optional[int] = None
        self.timed_out = False
        self.done = Event()
        self.stdin: Optional[WriteBuffer] = None

    def info(self) -> Dict[str, Any]:
        info: Dict[str, Any] = {
            "pid": self.pid,
            "command": self.command,
            "startTime": self.started,
            "running": self.exit_code is None,
            "timedOut": self.timed_out,
        }
        if self.exit_code is not None:
            info["exitCode"] = self.exit_code
        return info


def collect(fd: int, ring: Ring, channel: str) -> Future[None]:
    """Feed pipe ``fd`` into ``ring`` as output arrives, never applying backpressure; the
    future resolves at EOF (the pipe is closed then)."""
    eof: Future[None] = Future()
    pipe = Fd(fd)

    def ended() -> None:
        pipe.close()
        eof.set_result(None)

    Reader(pipe, lambda data: ring.append(channel, data), ended)
    return eof


class Commands:
    """The agent's background commands, running and recently exited, by pid."""

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        self.procs: Dict[int, Background] = {}
        self._tasks: set[Task[None]] = set()

    def get(self, args: Dict[str, Any]) -> Background:
        pid = args.get("pid")
        if not is_int(pid) or pid < 1:
            raise bad("'pid' must be a positive integer")
        found = self.procs.get(pid)
        if found is None:
            raise OpError(NOT_FOUND, f"no background command with pid {pid}")
        return found

    def start(self, cmd: Command) -> Background:
        if sum(1 for p in self.procs.values() if p.exit_code is None) >= MAX_RUNNING:
            raise OpError(TOO_MANY_REQUESTS, f"{MAX_RUNNING} background commands already run")
        proc = start(self.ctx, cmd, with_stdin=True)
        assert proc.stdin is not None
        bg = Background(proc.pid, cmd.command)
        self.procs[bg.pid] = bg
        eofs = [collect(proc.stdout, bg.ring, "stdout"), collect(proc.stderr, bg.ring, "stderr")]
        bg.stdin = WriteBuffer(Fd(proc.stdin, read=False, write=True))
        task = Task(self._supervise(bg, proc.exited, eofs, cmd.timeout))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return bg

    async def _supervise(
        self,
        bg: Background,
        exited: Future[int],
        eofs: list[Future[None]],
        time_limit: Optional[float],
    ) -> None:
        status = -9
        try:
            done, _ = await wait([exited], limit=time_limit)
            if not done:
                bg.timed_out = True
                kill_group(bg.pid)
            status = await exited
            await wait(eofs, limit=EOF_GRACE)
        finally:
            bg.exit_code = TIMEOUT_EXIT_CODE if bg.timed_out else exit_code(status)
            if bg.stdin is not None:
                bg.stdin.close_when_flushed()
            self.ctx.finished(bg.pid)
            bg.ring.close()
            bg.done.set()
            self._evict()

    def _evict(self) -> None:
        exited = [p for p in self.procs.values() if p.exit_code is not None]
        for old in sorted(exited, key=lambda p: p.started)[: max(0, len(exited) - MAX_EXITED)]:
            if self.procs.get(old.pid) is old:
                del self.procs[old.pid]


async def op_cmd_run(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
    bg = ctx.family(Commands).start(Command(ctx, args))
    return {"pid": bg.pid, "command": bg.command, "startTime": bg.started}


async def op_cmd_list(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
    procs = sorted(ctx.family(Commands).procs.values(), key=lambda p: p.started)
    return {"processes": [p.info() for p in procs]}


async def op_cmd_kill(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
    kill_group(ctx.family(Commands).get(args).pid)
    return {}


async def op_cmd_wait(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
    bg = ctx.family(Commands).get(args)
    await bg.done.wait()
    return {"exitCode": bg.exit_code, "timedOut": bg.timed_out}


async def op_cmd_attach(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
    bg = ctx.family(Commands).get(args)
    await stream.send_head({"pid": bg.pid})
    pos = dropped = 0
    while True:
        start, channel, data = bg.ring.read(pos, await stream.wait_credit())
        dropped += start - pos
        pos = start + len(data)
        if data:
            await stream.send_data(channel, data)
        elif bg.ring.closed:
            break
        else:
            await bg.ring.wait(pos)
    return {"exitCode": bg.exit_code, "timedOut": bg.timed_out, "dropped": dropped}


async def op_cmd_stdin(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
    bg = ctx.family(Commands).get(args)
    data, eof = args.get("data", ""), args.get("eof", False)
    if not isinstance(data, str) or not isinstance(eof, bool):
        raise bad("'data' must be a string and 'eof' a boolean")
    pipe = bg.stdin
    if pipe is None or pipe.closing:
        raise OpError(IO_ERROR, f"the stdin of pid {bg.pid} is closed")
    raw = data.encode("utf-8", "surrogateescape")
    if len(pipe.pending) + len(raw) > STDIN_LIMIT:
        raise OpError(IO_ERROR, f"pid {bg.pid} is not reading its stdin (buffer full)")
    if raw:
        pipe.write(raw)
    if eof:
        pipe.close_when_flushed()  # after the buffered bytes are written
    return {}
