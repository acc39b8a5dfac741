"""PTY sessions: interactive login shells on a :class:`Terminal`, behind the WebSocket routes.

PTY sessions keep a bounded scrollback and fan output out to their attached clients, each
through its own queue. Slow clients get backpressure first, like a terminal over ssh: once any
queue holds more than ``PAUSE_ABOVE`` bytes the terminal is no longer read (the program blocks
on a full terminal; the agent never does) until every queue is below ``RESUME_BELOW``. A client
that is still behind ``STALL_LIMIT`` seconds after the pause began is detached (its attach ends
with ``slow_consumer``) and the others go on; it may re-attach and gets the scrollback first.
Queues therefore stay below ``PAUSE_ABOVE`` plus one read, whatever the clients do.

Ops::

    pty.create  {cols?, rows?}         -> res {id, createdAt}
    pty.list    {}                     -> res {sessions: [{id, createdAt, clients, alive}]}
    pty.attach  {id} | {cols?, rows?}  -> head {id}, data "out" (scrollback, then live),
                                          res {exitCode} once the shell has ended;
                                          without ``id``: an ephemeral login shell that dies
                                          when this request ends
    pty.input   {id, data}             -> res {}
    pty.resize  {id, cols, rows}       -> res {}
    pty.buffer  {id}                   -> data "out" (the scrollback), res {}
    pty.close   {id}                   -> res {}
"""

from __future__ import annotations

import os
import time

from . import users
from .args import bad, req_str
from .context import AgentContext, default_cwd
from .loop import get_loop
from .protocol import IO_ERROR, NOT_FOUND, SLOW_CONSUMER, TOO_MANY_REQUESTS, OpError
from .ring import Ring
from .sync import Event
from .terminal import Terminal, term_size

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections import deque
    from typing import Any, Deque, Dict, Optional, Set

    from .loop import Timer
    from .stream import Stream
else:
    from _collections import deque

SCROLLBACK_BYTES = 256 * 1024
PAUSE_ABOVE = 1024 * 1024
RESUME_BELOW = 256 * 1024
STALL_LIMIT = 10.0
MAX_SESSIONS = 64


class Client:
    """One attached reader: a queue the terminal pushes into without waiting."""

    def __init__(self) -> None:
        self.chunks: Deque[bytes] = deque()
        self.size = 0
        self.detached = False
        self._changed = Event()

    def push(self, data: bytes) -> None:
        if not self.detached:
            self.chunks.append(data)
            self.size += len(data)
            self.wake()

    def detach(self) -> None:
        self.detached = True
        self.chunks.clear()
        self.size = 0
        self.wake()

    def take(self, limit: int) -> bytes:
        parts = []
        while self.chunks and limit > 0:
            chunk = self.chunks.popleft()
            if len(chunk) > limit:
                chunk, rest = chunk[:limit], chunk[limit:]
                self.chunks.appendleft(rest)
            parts.append(chunk)
            limit -= len(chunk)
            self.size -= len(chunk)
        return b"".join(parts)

    def wake(self) -> None:
        self._changed.set()
        self._changed = Event()

    async def wait(self) -> None:
        await self._changed.wait()


class PtySession:
    def __init__(self, sid: str, term: Terminal, ephemeral: bool) -> None:
        self.id = sid
        self.term = term
        self.ephemeral = ephemeral
        self.created = time.time()
        self.scrollback = Ring(SCROLLBACK_BYTES)
        self.clients: Set[Client] = set()
        self._stall: Optional[Timer] = None
        term.on_output = self._output
        term.ended.add_done_callback(self._ended)
        term.start()

    def _output(self, data: bytes) -> None:
        self.scrollback.append("out", data)
        for client in self.clients:
            client.push(data)
        if self._stall is None and any(c.size > PAUSE_ABOVE for c in self.clients):
            self.term.pause()
            self._stall = get_loop().call_later(STALL_LIMIT, self._detach_stalled)

    def drained(self) -> None:
        """A client took output from its queue (or left): resume once everyone caught up."""
        if self._stall is not None and all(c.size < RESUME_BELOW for c in self.clients):
            self._stall.cancel()
            self._stall = None
            self.term.resume()

    def _detach_stalled(self) -> None:
        self._stall = None
        for client in [c for c in self.clients if c.size >= RESUME_BELOW]:
            self.clients.discard(client)
            client.detach()
        self.term.resume()

    def _ended(self, _: object) -> None:
        for client in self.clients:
            client.wake()

    def info(self) -> Dict[str, Any]:
        return {
            "id": self.id,
            "createdAt": self.created,
            "clients": len(self.clients),
            "alive": not self.term.ended.done(),
        }


class Terminals:
    """The agent's PTY sessions, by id."""

    def __init__(self, ctx: AgentContext) -> None:
        self.sessions: Dict[str, PtySession] = {}

    def create(self, ctx: AgentContext, args: Dict[str, Any], ephemeral: bool) -> PtySession:
        if len(self.sessions) >= MAX_SESSIONS:
            raise OpError(TOO_MANY_REQUESTS, f"at most {MAX_SESSIONS} terminals at once")
        cols, rows = term_size(args)
        env = ctx.exec_env({})
        user = users.for_request(args, env, {})
        shell = ctx.need_shell("a login shell on the terminal (`sh -l`)")
        term = Terminal.spawn(ctx, [shell, "-l"], env, default_cwd(env), cols, rows, user=user)
        session = PtySession("pty-" + os.urandom(8).hex(), term, ephemeral)
        self.sessions[session.id] = session
        return session

    def get(self, args: Dict[str, Any]) -> PtySession:
        sid = req_str(args, "id")
        found = self.sessions.get(sid)
        if found is None:
            raise OpError(NOT_FOUND, f"terminal session {sid!r} not found")
        return found

    def close(self, session: PtySession) -> None:
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]
        session.term.close()


async def op_pty_create(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
    session = ctx.family(Terminals).create(ctx, args, ephemeral=False)
    return {"id": session.id, "createdAt": session.created}


async def op_pty_list(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
    sessions = [s for s in ctx.family(Terminals).sessions.values() if not s.ephemeral]
    return {"sessions": [s.info() for s in sorted(sessions, key=lambda s: s.created)]}


async def op_pty_attach(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
    terminals = ctx.family(Terminals)
    ephemeral = args.get("id") is None
    session = terminals.create(ctx, args, True) if ephemeral else terminals.get(args)
    client = Client()
    _, backlog = session.scrollback.read_all(0)
    if backlog:
        client.push(backlog)
    session.clients.add(client)  # no await since the snapshot: nothing missed, nothing twice
    try:
        await stream.send_head({"id": session.id})
        while True:
            if client.detached:
                raise OpError(SLOW_CONSUMER, f"client still behind after {STALL_LIMIT:g}s")
            if client.size:
                data = client.take(await stream.wait_credit())
                session.drained()
                await stream.send_data("out", data)
            elif session.term.ended.done():
                return {"exitCode": session.term.ended.result()}
            else:
                await client.wait()
    finally:
        session.clients.discard(client)
        session.drained()
        if ephemeral:
            terminals.close(session)


async def op_pty_input(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
    session = ctx.family(Terminals).get(args)
    data = args.get("data")
    if not isinstance(data, str):
        raise bad("'data' must be a string")
    if session.term.ended.done():
        raise OpError(IO_ERROR, f"the shell of terminal session {session.id!r} has exited")
    session.term.write(data.encode("utf-8", "surrogateescape"))
    return {}


async def op_pty_resize(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
    session = ctx.family(Terminals).get(args)
    session.term.resize(*term_size(args, required=True))
    return {}


async def op_pty_buffer(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
    _, data = ctx.family(Terminals).get(args).scrollback.read_all(0)
    await stream.send_data("out", data)
    return {}


async def op_pty_close(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
    terminals = ctx.family(Terminals)
    terminals.close(terminals.get(args))
    return {}
