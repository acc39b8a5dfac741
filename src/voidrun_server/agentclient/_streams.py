"""What the client hands back for commands and file reads.

The plain results of ``AgentClient.exec`` (:class:`ExecResult`) and of an exec stream
(:class:`ExecOutput` chunks, then one :class:`ExecExit`), and the two streaming helpers,
:class:`ExecStream` and :class:`FileDownload`, each of which owns one channel on the client's
connection and closes it (telling the agent to stop) when left.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

from voidrun_server.agent.protocol import DATA, HEAD, RES

from ._channel import Channel
from ._errors import AgentProtocolError
from ._wire import Connection


@dataclass(frozen=True, slots=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False

    @property
    def stdout_text(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")

    @property
    def stderr_text(self) -> str:
        return self.stderr.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class ExecOutput:
    """A chunk of output, exactly as the command wrote it (not split on lines)."""

    channel: Literal["stdout", "stderr"]
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class ExecExit:
    """Always the last event of an exec stream."""

    exit_code: int
    timed_out: bool = False


def _int(body: Mapping[str, Any], key: str) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise AgentProtocolError(f"agent reply lacks integer {key!r}: {dict(body)!r}")
    return value


class HeadedStream:
    """A request whose reply opens with a ``head`` frame, used as ``async with … as s``.

    Entering sends the request and waits for the head, so a refusal (bad ``cwd``, missing
    file, unknown pid) raises here, before any data; leaving early cancels the request on the
    agent. Subclasses read the head in :meth:`_on_head` and frames with :meth:`_frame`.
    """

    def __init__(self, conn: Connection, op: str, args: dict[str, Any]) -> None:
        self._conn = conn
        self._op = op
        self._args = args
        self._channel: Channel | None = None
        self.head: dict[str, Any] = {}

    def _on_head(self, body: dict[str, Any]) -> None:
        """Read what the head carries; raising here closes the request."""

    async def __aenter__(self) -> Self:
        self._channel = await self._conn.open(self._op, self._args)
        try:
            header, _ = await self._channel.receive()
            if header["t"] != HEAD:
                raise AgentProtocolError(f"{self._op} began with {header['t']!r}, not head")
            self.head = header["body"]
            self._on_head(self.head)
        except BaseException:
            self._channel.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._channel is not None:
            self._channel.close()

    def __aiter__(self) -> Self:
        return self

    async def _frame(self) -> tuple[dict[str, Any], bytes]:
        if self._channel is None:
            raise RuntimeError(f"use 'async with' before iterating {self._op}")
        return await self._channel.receive()


class ExecStream(HeadedStream):
    """``async with agent.exec_stream(cmd) as s: async for event in s: ...``

    Events are :class:`ExecOutput` chunks followed by one :class:`ExecExit`.
    """

    def __init__(self, conn: Connection, args: dict[str, Any]) -> None:
        super().__init__(conn, "exec.stream", args)
        self.pid = 0
        self.exit: ExecExit | None = None

    def _on_head(self, body: dict[str, Any]) -> None:
        self.pid = _int(body, "pid")

    async def __anext__(self) -> ExecOutput | ExecExit:
        if self.exit is not None:
            raise StopAsyncIteration
        header, payload = await self._frame()
        if header["t"] == DATA:
            return ExecOutput("stderr" if header["ch"] == "stderr" else "stdout", payload)
        if header["t"] == RES:
            body = header["body"]
            self.exit = ExecExit(_int(body, "exitCode"), bool(body.get("timedOut")))
            return self.exit
        raise AgentProtocolError(f"unexpected {header['t']!r} frame in exec.stream")


class FileDownload(HeadedStream):
    """``async with agent.read_file(path) as f: f.size; async for chunk in f: ...``

    Entering raises ``AgentOperationError`` (``not_found``, ``is_a_directory``, ...) before any
    byte is read.
    """

    def __init__(self, conn: Connection, path: str) -> None:
        super().__init__(conn, "file.read", {"path": path})
        self._done = False
        self.size = 0
        self.mode = 0
        self.mtime = 0.0

    def _on_head(self, body: dict[str, Any]) -> None:
        self.size, self.mode = _int(body, "size"), _int(body, "mode")
        self.mtime = float(body.get("mtime") or 0.0)

    async def __anext__(self) -> bytes:
        while not self._done:
            header, payload = await self._frame()
            if header["t"] == DATA:
                return payload
            if header["t"] != RES:
                raise AgentProtocolError(f"unexpected {header['t']!r} frame in file.read")
            self._done = True
        raise StopAsyncIteration
