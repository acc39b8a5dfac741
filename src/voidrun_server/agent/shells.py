"""Persistent shell sessions: one long-lived shell per session, commands run inside it.

State (cwd, exported variables, functions) persists because every command runs in the same
shell process. The shell runs on a :class:`Terminal` in raw mode and reads its input as a
script (non-interactive: no prompt, no echo, no job control), so the output is exactly what the
commands print. ``resize`` works because it is a real terminal, and ``input`` answers a command
that reads (``read x``) because the command reads the same terminal the shell reads from.

End of a command: each ``exec`` sends ONE line::

    eval '<command, single-quote escaped>'; __vr_rc=$?; printf '\\n\\036VR<token>:%d\\036\\n' ...

``<token>`` is random per command, so output can neither fake nor hide the marker, and no
prompt has to be guessed. It is one line so that a command reading stdin cannot swallow the
marker, and ``eval`` turns a syntax error into exit status 2 instead of a shell waiting for a
closing quote. The ``\\n`` before the marker is stripped again, so output is passed unchanged.

Ops::

    sh.create       {id?, shell?, cols?, rows?}   -> res {id}
    sh.exec         {id, command, timeout?}       -> data "stdout", res {exitCode, timedOut,
                                                     truncated}
    sh.exec.stream  {id, command, timeout?}       -> head {}, data "stdout" as produced,
                                                     res {exitCode, timedOut}
    sh.input        {id, data}                    -> data "stdout" (output that no exec
                                                     claims, after it settles), res {}
    sh.resize       {id, cols, rows}              -> res {}
    sh.close        {id}                          -> res {}

A timed-out command keeps running; the session stays busy until it ends. Its later output goes
to what ``input`` returns.
"""

from __future__ import annotations

import os

from . import users
from .args import bad, opt_number, opt_str, req_str
from .context import DEFAULT_MAX_OUTPUT, AgentContext, default_cwd
from .loop import get_loop
from .paths import which
from .process import TIMEOUT_EXIT_CODE
from .protocol import IO_ERROR, NOT_FOUND, TOO_MANY_REQUESTS, OpError
from .ring import Ring
from .sync import Event
from .terminal import MarkedCommand, Terminal, term_size

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

    from .futures import Future
    from .stream import Stream
    from .terminal import Sink

UNCLAIMED_BYTES = 256 * 1024
MAX_SESSIONS = 64
MAX_ID_CHARS = 100
PAUSE_ABOVE = 1024 * 1024  # a streaming consumer this far behind pauses the terminal
INPUT_QUIET = 0.1  # ``input`` returns once output has been quiet this long...
INPUT_MAX_WAIT = 1.0  # ...or after this long in any case
MARKER_WAIT = 0.005  # see ShellSession.follow


class ShellSession:
    def __init__(self, sid: str, term: Terminal) -> None:
        self.id = sid
        self.term = term
        self.unclaimed = Ring(UNCLAIMED_BYTES)  # output outside any exec, for ``input``
        self.cursor = 0
        self.run: Optional[MarkedCommand] = None
        term.on_output = self._output
        term.ended.add_done_callback(self._ended)
        term.start()
        term.write(b"exec >&0 2>&0\n")  # started with both off the tty: non-interactive

    def keep(self, data: bytes) -> None:
        self.unclaimed.append("stdout", data)

    def _output(self, data: bytes) -> None:
        run = self.run
        if run is None:
            self.keep(data)
            return
        rest = run.feed(data)
        if run.done.done():
            self.run = None
            if rest:
                self._output(rest)

    def _ended(self, ended: Future[int]) -> None:
        if self.run is not None:
            self.run.end(ended.result())
            self.run = None
        self.unclaimed.close()

    def begin(self, command: str, emit: Sink) -> MarkedCommand:
        if self.term.ended.done():
            raise OpError(IO_ERROR, f"the shell of session {self.id!r} has exited")
        if self.run is not None:
            raise bad(f"session {self.id!r} is busy with another command")
        run = self.run = MarkedCommand(emit)
        self.term.write(run.line(command))
        return run

    async def follow(
        self,
        run: MarkedCommand,
        time_limit: Optional[float],
        send: Callable[[bytes], Awaitable[None]],
    ) -> Tuple[int, bool]:
        """Pass the run's output to ``send`` until it ends; return (exit code, timed out).

        Output waits in a queue between the terminal and ``send``; above ``PAUSE_ABOVE`` bytes
        the terminal is paused, so a slow consumer slows the command instead of growing memory.
        Output that ends where the end-of-command marker may begin (a final newline is held
        back until the next bytes show whether the marker follows) waits up to ``MARKER_WAIT``
        for them, once: the shell writes the marker right after a command's last line, and so
        the last line and the end usually arrive together instead of the newline on its own.
        """
        queue: List[bytes] = []
        queued = [0]  # bytes in queue
        wake = Event()
        loop = get_loop()

        def emit(data: bytes) -> None:
            queue.append(data)
            queued[0] += len(data)
            wake.set()
            if queued[0] > PAUSE_ABOVE:
                self.term.pause()

        run.emit = emit
        run.done.add_done_callback(lambda _: wake.set())
        deadline = None if not time_limit else loop.time() + time_limit
        waited = False
        try:
            while True:
                if queue and run.held and not waited and not run.done.done():
                    waited = True
                    wake.clear()
                    await wake.wait(MARKER_WAIT)
                    continue
                if queue:
                    waited = False
                    data = b"".join(queue)
                    queue.clear()
                    queued[0] = 0
                    self.term.resume()
                    await send(data)
                    continue
                if run.done.done():
                    return run.done.result(), False
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return TIMEOUT_EXIT_CODE, True
                wake.clear()
                await wake.wait(remaining)
        finally:
            self.term.resume()
            run.emit = self.keep  # a command left running: its output is unclaimed now

    async def settle(self) -> bytes:
        """Unclaimed output since the last call, once it has been quiet for a moment."""
        loop = get_loop()
        give_up = loop.time() + INPUT_MAX_WAIT
        seen = self.unclaimed.end
        while self.run is None and loop.time() < give_up:
            if not await self.unclaimed.wait(seen, INPUT_QUIET):
                break
            if self.unclaimed.closed:
                break
            seen = self.unclaimed.end
        _, data = self.unclaimed.read_all(self.cursor)
        self.cursor = self.unclaimed.end
        return data


class Shells:
    """The agent's shell sessions, by id."""

    def __init__(self, ctx: AgentContext) -> None:
        self.sessions: Dict[str, ShellSession] = {}

    def create(self, ctx: AgentContext, args: Dict[str, Any]) -> ShellSession:
        sid = opt_str(args, "id") or "sess-" + os.urandom(8).hex()
        if len(sid) > MAX_ID_CHARS or not sid.isprintable():
            raise bad(f"session ids are 1..{MAX_ID_CHARS} printable characters")
        for old in [s for s in self.sessions.values() if s.term.ended.done()]:
            del self.sessions[old.id]  # the shell exited (``exit``): forget it
        if sid in self.sessions:
            raise bad(f"session {sid!r} already exists")
        if len(self.sessions) >= MAX_SESSIONS:
            raise OpError(TOO_MANY_REQUESTS, f"at most {MAX_SESSIONS} shell sessions at once")
        env = ctx.exec_env({})
        user = users.for_request(args, env, {})
        shell = opt_str(args, "shell")
        if shell is None:
            found: Optional[str] = ctx.need_shell("a shell session (`sh` reading commands)")
        else:
            found = which(shell, path=env.get("PATH"))
        if found is None:
            raise OpError(
                NOT_FOUND,
                f"shell {shell!r} not found on PATH: install it in the image, or leave 'shell' "
                "out to use the image's bash or sh",
            )
        cols, rows = term_size(args)
        term = Terminal.spawn(ctx, [found], env, default_cwd(env), cols, rows, True, user)
        session = self.sessions[sid] = ShellSession(sid, term)
        return session

    def get(self, args: Dict[str, Any]) -> ShellSession:
        sid = req_str(args, "id")
        found = self.sessions.get(sid)
        if found is None:
            raise OpError(NOT_FOUND, f"session {sid!r} not found")
        return found


async def op_sh_create(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
    return {"id": ctx.family(Shells).create(ctx, args).id}


async def op_sh_exec(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
    session = ctx.family(Shells).get(args)
    run = session.begin(req_str(args, "command"), session.keep)
    out = bytearray()
    truncated = [False]

    async def collect(data: bytes) -> None:
        room = DEFAULT_MAX_OUTPUT - len(out)
        truncated[0] = truncated[0] or len(data) > room
        out.extend(data[: max(0, room)])

    code, timed_out = await session.follow(run, opt_number(args, "timeout"), collect)
    await stream.send_data("stdout", out)
    return {"exitCode": code, "timedOut": timed_out, "truncated": truncated[0]}


async def op_sh_exec_stream(
    ctx: AgentContext, stream: Stream, args: Dict[str, Any]
) -> Dict[str, Any]:
    session = ctx.family(Shells).get(args)
    run = session.begin(req_str(args, "command"), session.keep)
    await stream.send_head({})

    async def forward(data: bytes) -> None:
        await stream.send_data("stdout", data)

    code, timed_out = await session.follow(run, opt_number(args, "timeout"), forward)
    return {"exitCode": code, "timedOut": timed_out}


async def op_sh_input(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
    session = ctx.family(Shells).get(args)
    data = args.get("data")
    if not isinstance(data, str):
        raise bad("'data' must be a string")
    if session.term.ended.done():
        raise OpError(IO_ERROR, f"the shell of session {session.id!r} has exited")
    session.term.write(data.encode("utf-8", "surrogateescape"))
    await stream.send_data("stdout", await session.settle())
    return {}


async def op_sh_resize(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
    ctx.family(Shells).get(args).term.resize(*term_size(args, required=True))
    return {}


async def op_sh_close(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
    shells = ctx.family(Shells)
    session = shells.get(args)
    del shells.sessions[session.id]
    session.term.close()
    return {}
