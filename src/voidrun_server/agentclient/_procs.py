"""Client side of the process ops: background commands, shell sessions, PTY sessions.

Reached through ``AgentClient.procs``; the op names and bodies are documented in the agent's
``commands``, ``shells`` and ``pty`` modules. Streaming ops share :class:`OpStream`: entering
waits for the agent's ``head`` (so an unknown pid or session raises before any output), data
arrives as :class:`ExecOutput` chunks, and the final body lands in ``result``. Leaving the
``async with`` early cancels the request on the agent (which for an ephemeral PTY ends it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from voidrun_server.agent.protocol import DATA, RES

from ._errors import AgentProtocolError, AgentResponseTooLargeError
from ._streams import HeadedStream
from ._wire import Connection

MAX_COLLECTED = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Output:
    """A chunk of output as the agent read it; ``channel`` is "stdout" or "stderr"."""

    channel: str
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    pid: int
    command: str
    start_time: float  # epoch seconds
    running: bool
    exit_code: int | None = None
    timed_out: bool = False


@dataclass(frozen=True, slots=True)
class ShellResult:
    output: bytes
    exit_code: int
    timed_out: bool = False
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class TerminalInfo:
    id: str
    created_at: float  # epoch seconds
    clients: int
    alive: bool


def _int(body: Mapping[str, Any], key: str) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise AgentProtocolError(f"agent reply lacks integer {key!r}: {dict(body)!r}")
    return value


def _float(body: Mapping[str, Any], key: str) -> float:
    value = body.get(key) or 0.0
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise AgentProtocolError(f"agent reply has a non-number {key!r}")
    return float(value)


def _str(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key, "")
    if not isinstance(value, str):
        raise AgentProtocolError(f"agent reply has a non-string {key!r}")
    return value


def _process(body: Mapping[str, Any]) -> ProcessInfo:
    code = body.get("exitCode")
    return ProcessInfo(
        pid=_int(body, "pid"),
        command=_str(body, "command"),
        start_time=_float(body, "startTime"),
        running=bool(body.get("running", True)),
        exit_code=code if isinstance(code, int) and not isinstance(code, bool) else None,
        timed_out=bool(body.get("timedOut")),
    )


class OpStream(HeadedStream):
    """``async with ops.stream(op, args) as s: async for chunk in s: ...; s.result``"""

    def __init__(self, conn: Connection, op: str, args: dict[str, Any]) -> None:
        super().__init__(conn, op, args)
        self.result: dict[str, Any] | None = None

    async def __anext__(self) -> Output:
        if self.result is not None:
            raise StopAsyncIteration
        header, payload = await self._frame()
        if header["t"] == DATA:
            return Output("stderr" if header["ch"] == "stderr" else "stdout", payload)
        if header["t"] == RES:
            self.result = header["body"]
            raise StopAsyncIteration
        raise AgentProtocolError(f"unexpected {header['t']!r} frame in {self._op}")


class ProcessOps:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def _collect(self, op: str, args: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
        """Run a request; return its data payloads joined and its result body.

        The agent bounds these replies itself (shell output, PTY scrollback); the cap here is
        for an agent that does not."""
        out = bytearray()
        channel = await self._conn.open(op, args)
        try:
            while True:
                header, payload = await channel.receive()
                if header["t"] == DATA:
                    if len(out) + len(payload) > MAX_COLLECTED:
                        raise AgentResponseTooLargeError(
                            f"{op} sent more than {MAX_COLLECTED} bytes"
                        )
                    out.extend(payload)
                elif header["t"] == RES:
                    body: dict[str, Any] = header["body"]
                    return bytes(out), body
                else:
                    raise AgentProtocolError(f"unexpected {header['t']!r} frame in {op}")
        finally:
            channel.close()

    async def _call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        return (await self._collect(op, args))[1]

    def stream(self, op: str, args: dict[str, Any]) -> OpStream:
        return OpStream(self._conn, op, args)

    # -- background commands -------------------------------------------------------------------

    async def run_command(
        self,
        command: str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        time_limit: float | None = None,
        user: str | None = None,
    ) -> ProcessInfo:
        """Start ``command`` in the background; ``time_limit`` None or 0 means none."""
        args = {"command": command, "env": dict(env) if env else None, "cwd": cwd}
        if user:
            args["user"] = user
        body = await self._call("cmd.run", {**args, "timeout": time_limit or None})
        return ProcessInfo(_int(body, "pid"), command, _float(body, "startTime"), True)

    async def list_commands(self) -> list[ProcessInfo]:
        body = await self._call("cmd.list", {})
        return [_process(p) for p in body.get("processes", []) if isinstance(p, dict)]

    async def kill_command(self, pid: int) -> None:
        await self._call("cmd.kill", {"pid": pid})

    async def wait_command(self, pid: int) -> ProcessInfo:
        body = await self._call("cmd.wait", {"pid": pid})
        return ProcessInfo(pid, "", 0.0, False, _int(body, "exitCode"), bool(body.get("timedOut")))

    def attach_command(self, pid: int) -> OpStream:
        """Output from the oldest byte kept, then live; ``result`` has exitCode, timedOut and
        dropped (bytes the ring had already discarded)."""
        return self.stream("cmd.attach", {"pid": pid})

    async def write_stdin(self, pid: int, data: str, *, eof: bool = False) -> None:
        await self._call("cmd.stdin", {"pid": pid, "data": data, "eof": eof})

    # -- shell sessions ------------------------------------------------------------------------

    async def shell_create(
        self,
        session_id: str | None = None,
        *,
        shell: str | None = None,
        cols: int | None = None,
        rows: int | None = None,
        user: str | None = None,
    ) -> str:
        args = {"id": session_id, "shell": shell, "cols": cols, "rows": rows, "user": user}
        return _str(await self._call("sh.create", args), "id")

    async def shell_exec(
        self, session_id: str, command: str, *, time_limit: float | None = None
    ) -> ShellResult:
        args = {"id": session_id, "command": command, "timeout": time_limit}
        output, body = await self._collect("sh.exec", args)
        return ShellResult(
            output, _int(body, "exitCode"), bool(body.get("timedOut")), bool(body.get("truncated"))
        )

    def shell_exec_stream(
        self, session_id: str, command: str, *, time_limit: float | None = None
    ) -> OpStream:
        """Output as produced; ``result`` = {exitCode, timedOut}."""
        return self.stream(
            "sh.exec.stream", {"id": session_id, "command": command, "timeout": time_limit}
        )

    async def shell_input(self, session_id: str, data: str) -> bytes:
        """Write ``data`` to the session; return output no running command claims."""
        return (await self._collect("sh.input", {"id": session_id, "data": data}))[0]

    async def shell_resize(self, session_id: str, cols: int, rows: int) -> None:
        await self._call("sh.resize", {"id": session_id, "cols": cols, "rows": rows})

    async def shell_close(self, session_id: str) -> None:
        await self._call("sh.close", {"id": session_id})

    # -- PTY sessions --------------------------------------------------------------------------

    async def pty_create(
        self, cols: int = 80, rows: int = 24, user: str | None = None
    ) -> TerminalInfo:
        body = await self._call("pty.create", {"cols": cols, "rows": rows, "user": user})
        return TerminalInfo(_str(body, "id"), _float(body, "createdAt"), 0, True)

    async def pty_list(self) -> list[TerminalInfo]:
        body = await self._call("pty.list", {})
        return [
            TerminalInfo(
                _str(s, "id"), _float(s, "createdAt"), _int(s, "clients"), bool(s.get("alive"))
            )
            for s in body.get("sessions", [])
            if isinstance(s, dict)
        ]

    def pty_attach(
        self,
        session_id: str | None = None,
        cols: int = 80,
        rows: int = 24,
        user: str | None = None,
    ) -> OpStream:
        """Attach to a session (scrollback first), or with no id start an ephemeral login shell
        (as ``user``) that lives as long as the stream; ``head["id"]`` names it."""
        args: dict[str, Any] = (
            {"id": session_id} if session_id else {"cols": cols, "rows": rows, "user": user}
        )
        return self.stream("pty.attach", args)

    async def pty_input(self, session_id: str, data: str) -> None:
        await self._call("pty.input", {"id": session_id, "data": data})

    async def pty_resize(self, session_id: str, cols: int, rows: int) -> None:
        await self._call("pty.resize", {"id": session_id, "cols": cols, "rows": rows})

    async def pty_buffer(self, session_id: str) -> bytes:
        return (await self._collect("pty.buffer", {"id": session_id}))[0]

    async def pty_close(self, session_id: str) -> None:
        await self._call("pty.close", {"id": session_id})
