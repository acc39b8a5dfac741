"""The public client: one connection to one sandbox agent, safe to share between tasks.

Connections are cheap and stateless on the agent side (environment defaults and running
commands belong to the agent, not the connection), so a restarted server simply opens a new
client. Leaving a stream or an ``exec`` early — exception, cancellation, ``break`` — tells the
agent to kill the command or drop the upload.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc

from voidrun_server.agent.protocol import DATA, HEAD, RES, Header

from ._channel import Channel
from ._errors import (
    AgentConnectionError,
    AgentError,
    AgentProtocolError,
    AgentResponseTooLargeError,
)
from ._ports import PortStream, open_port_stream
from ._procs import ProcessOps
from ._socket import connect_unix
from ._streams import ExecResult, ExecStream, FileDownload, _int
from ._wire import Connection

Opener = Callable[[float], Awaitable[socket.socket]]
DEFAULT_MAX_OUTPUT = 16 * 1024 * 1024  # the agent's own default for exec's maxOutput
MAX_ITEMS = 100_000  # listing entries per fs op (the agent refuses to list more than 50,000)
MAX_EVENT_SIZE = 64 * 1024  # one file event (a path is at most 4 KiB)


def _exec_args(
    command: str,
    env: Mapping[str, str] | None,
    cwd: str | None,
    timeout: float | None,
    user: str | None = None,
) -> dict[str, Any]:
    args = {
        "command": command,
        "env": dict(env) if env else None,
        "cwd": cwd,
        "timeout": timeout,
    }
    if user:
        args["user"] = user
    return args


class AgentClient:
    """A connection to one sandbox agent.

    ``async with AgentClient(path, connect_timeout=5) as agent: await agent.exec("ls")``

    Entering connects (retrying until ``connect_timeout`` while the agent starts up) and checks
    the protocol version (:class:`AgentVersionError` on mismatch). Any number of tasks may use
    the client at once; their requests share the one connection.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        *,
        connect_timeout: float = 10.0,
        owner_uid: int | None = None,
        opener: Opener | None = None,
    ):
        """``owner_uid``: refuse a socket file not owned by this uid (the sandbox's root).
        ``opener``: connect some other way (a node's tunnel) instead of the Unix path, which
        then only names the connection in messages."""
        self.opener = opener
        self.socket_path = os.fspath(socket_path)
        self.connect_timeout = connect_timeout
        self.owner_uid = owner_uid
        self._conn: Connection | None = None
        self._task_group: anyio.abc.TaskGroup | None = None

    @property
    def agent_version(self) -> int:
        return self._connection.agent_version

    @property
    def agent_ops(self) -> frozenset[str]:
        """Op names the agent supports, for features newer than this client's minimum."""
        return self._connection.agent_ops

    @property
    def closed(self) -> bool:
        """True once the connection is unusable (agent gone, or client closed): reconnect."""
        return self._conn is None or self._conn.failed

    @property
    def failure(self) -> AgentError | None:
        """Why the connection ended, once it has (a protocol violation, a lost socket)."""
        return None if self._conn is None else self._conn.failure

    async def wait_closed(self) -> None:
        """Return once the connection has ended, for whatever reason."""
        await self._connection.closed.wait()

    def freeze(self, frozen: bool) -> None:
        """See ``Connection.freeze``: the sandbox's processes are (no longer) frozen."""
        if self._conn is not None:
            self._conn.freeze(frozen)

    @property
    def _connection(self) -> Connection:
        if self._conn is None:
            raise AgentConnectionError("the client is not connected; use 'async with'")
        return self._conn

    async def __aenter__(self) -> Self:
        deadline = anyio.current_time() + self.connect_timeout
        if self.opener is not None:
            sock = await self.opener(self.connect_timeout)
        else:
            sock = await connect_unix(self.socket_path, self.connect_timeout, self.owner_uid)
        attached: Connection | None = None
        conn: Connection | None = None
        try:
            with anyio.move_on_after(deadline - anyio.current_time()):
                attached = await Connection.attach(sock, self.socket_path)
                await attached.handshake()
                conn = attached
        except BaseException:
            _close(attached, sock)
            raise
        if conn is None:
            _close(attached, sock)
            raise AgentConnectionError(
                f"the agent at {self.socket_path} did not answer the handshake"
                f" within {self.connect_timeout:g}s"
            )
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        task_group.start_soon(conn.read_loop)
        self._conn, self._task_group = conn, task_group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, task_group = self._conn, self._task_group
        if conn is None or task_group is None:
            return
        self._conn = self._task_group = None
        conn.fail(AgentConnectionError("the client was closed"))
        task_group.cancel_scope.cancel()
        # The caller's exception (if any) propagates on its own; handing it to the task group
        # would wrap it in an ExceptionGroup.
        await task_group.__aexit__(None, None, None)
        conn.close()

    @asynccontextmanager
    async def _request(self, op: str, args: dict[str, Any]) -> AsyncIterator[Channel]:
        channel = await self._connection.open(op, args)
        try:
            yield channel
        finally:
            channel.close()

    async def _call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        async with self._request(op, args) as channel:
            header = await _final(channel)
            body: dict[str, Any] = header["body"]
            return body

    async def ping(self) -> None:
        await self._call("ping", {})

    async def set_env(self, env: Mapping[str, str]) -> None:
        """Merge ``env`` into the defaults inherited by every later exec on this agent."""
        await self._call("env.set", {"env": dict(env)})

    async def vm_identity(
        self,
        *,
        hostname: str,
        clock: float,
        seed: bytes,
        env: Mapping[str, str],
        env_file: str | None = None,
    ) -> None:
        """A restored VM snapshot becomes this sandbox (``agent/guest.py``): hostname, wall
        clock, a CRNG reseed from ``seed``, ``env`` merged into the exec defaults and written
        to ``env_file``. Needs the agent to be the guest's root."""
        args = {"hostname": hostname, "time": clock, "seed": seed.hex(), "env": dict(env)}
        await self._call("vm.identity", {**args, "envFile": env_file})

    async def exec(
        self,
        command: str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the command's limit, enforced by the agent
        max_output: int | None = None,
        user: str | None = None,
    ) -> ExecResult:
        """Run ``command`` with ``bash -c`` and wait for it.

        ``timeout`` (seconds, None = no limit) kills the whole process group and yields exit
        code 124. Each of stdout/stderr keeps its first ``max_output`` bytes (agent default
        16 MiB); the rest is dropped and flagged as truncated.
        """
        args = _exec_args(command, env, cwd, timeout, user)
        args["maxOutput"] = max_output
        cap = max_output if max_output is not None else DEFAULT_MAX_OUTPUT
        out, err = bytearray(), bytearray()
        async with self._request("exec", args) as channel:
            while True:
                header, payload = await channel.receive()
                if header["t"] == DATA:
                    buf = err if header["ch"] == "stderr" else out
                    if len(buf) + len(payload) > cap:  # the agent promised to stop at cap
                        raise AgentResponseTooLargeError(
                            f"exec sent more than {cap} bytes of output"
                        )
                    buf.extend(payload)
                elif header["t"] == RES:
                    body = header["body"]
                    return ExecResult(
                        exit_code=_int(body, "exitCode"),
                        stdout=bytes(out),
                        stderr=bytes(err),
                        timed_out=bool(body.get("timedOut")),
                        stdout_truncated=bool(body.get("stdoutTruncated")),
                        stderr_truncated=bool(body.get("stderrTruncated")),
                    )
                else:
                    raise AgentProtocolError(f"unexpected {header['t']!r} frame in exec")

    def exec_stream(
        self,
        command: str,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        user: str | None = None,
    ) -> ExecStream:
        """Like :meth:`exec` but output arrives as produced; see :class:`ExecStream`."""
        return ExecStream(self._connection, _exec_args(command, env, cwd, timeout, user))

    def read_file(self, path: str) -> FileDownload:
        return FileDownload(self._connection, path)

    async def read_bytes(self, path: str) -> bytes:
        async with self.read_file(path) as download:
            return b"".join([chunk async for chunk in download])

    async def write_file(
        self,
        path: str,
        data: bytes | bytearray | memoryview | AsyncIterable[bytes],
        *,
        mode: int = 0o644,
        durable: bool = True,
    ) -> int:
        """Atomically replace ``path`` (creating parent directories); return bytes written.

        If ``data`` raises or the caller is cancelled, the agent discards the partial upload
        and ``path`` is left as it was. ``durable=False`` skips the fsyncs (the replacement is
        still atomic for readers; a host crash may lose it): for files rewritten on every start.
        """
        args: dict[str, object] = {"path": path, "mode": mode}
        if not durable:
            args["durable"] = False
        async with self._request("file.write", args) as channel:
            if isinstance(data, (bytes, bytearray, memoryview)):
                await channel.send_data(data)
            else:
                async for chunk in data:
                    await channel.send_data(chunk)
            await channel.send_end()
            return _int((await _final(channel))["body"], "size")

    # --- file system ops (files API) ---

    async def fs_call(
        self, op: str, args: dict[str, Any], *, max_output: int = 64 * 1024 * 1024
    ) -> tuple[dict[str, Any], list[Any], bytes]:
        """Run an ``fs.*`` op (see ``voidrun_server.agent.fsops``) to completion.

        Returns the result body, the JSON items streamed as NDJSON on channel "items"
        (listings) and the bytes of any other channel (head/tail output). The agent is not
        trusted to bound its output: more than ``max_output`` bytes in all, more than
        ``MAX_ITEMS`` items, or an item that is not a JSON object is a protocol error.
        """
        import json

        items: list[Any] = []
        out = bytearray()
        pending = b""
        received = 0
        async with self._request(op, args) as channel:
            while True:
                header, payload = await channel.receive()
                if header["t"] == RES:
                    if pending:
                        raise AgentProtocolError(f"{op} ended inside an item")
                    return header["body"], items, bytes(out)
                if header["t"] != DATA:
                    raise AgentProtocolError(f"unexpected {header['t']!r} frame in {op}")
                received += len(payload)
                if received > max_output:
                    raise AgentResponseTooLargeError(f"{op} sent more than {max_output} bytes")
                if header["ch"] != "items":
                    out.extend(payload)
                    continue
                *lines, pending = (pending + payload).split(b"\n")
                try:
                    parsed = [json.loads(line) for line in lines]
                except (ValueError, RecursionError):
                    raise AgentProtocolError(f"{op} sent an item that is not JSON") from None
                if not all(isinstance(item, dict) for item in parsed):
                    raise AgentProtocolError(f"{op} sent an item that is not an object")
                items.extend(parsed)
                if len(items) > MAX_ITEMS:
                    raise AgentResponseTooLargeError(f"{op} sent more than {MAX_ITEMS} items")

    @asynccontextmanager
    async def watch(
        self, path: str, *, recursive: bool, ignore_hidden: bool
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """``async with agent.watch(path, ...) as events: async for event in events: ...``

        Entering returns once the agent's inotify watches are in place (so nothing done after
        it is missed; a missing path raises ``AgentOperationError`` here). Leaving cancels the
        watch. Iteration ends when the watched root disappears; events are FileEvent dicts.
        """
        import json

        args = {"path": path, "recursive": recursive, "ignoreHidden": ignore_hidden}
        async with self._request("fs.watch", args) as channel:
            header, _ = await channel.receive()
            if header["t"] != HEAD:
                raise AgentProtocolError(f"fs.watch began with {header['t']!r}, not head")

            async def events() -> AsyncIterator[dict[str, Any]]:
                pending = b""
                while True:
                    header, payload = await channel.receive()
                    if header["t"] == RES:
                        return
                    if header["t"] != DATA:
                        raise AgentProtocolError(f"unexpected {header['t']!r} frame in fs.watch")
                    *lines, pending = (pending + payload).split(b"\n")
                    if len(pending) > MAX_EVENT_SIZE:
                        raise AgentResponseTooLargeError("fs.watch sent an event over 64 KiB")
                    for line in lines:
                        try:
                            event = json.loads(line)
                        except (ValueError, RecursionError):
                            raise AgentProtocolError("fs.watch sent a non-JSON event") from None
                        if isinstance(event, dict):
                            yield event

            yield events()

    # --- previews ---

    async def open_port(self, port: int) -> PortStream:
        """A TCP connection to ``127.0.0.1:port`` (else ``::1``) inside the sandbox, relayed by
        the agent (``port.connect``); returns once connected. Nothing listening raises
        ``AgentOperationError`` with code ``port_closed``. The caller must ``aclose`` it."""
        return await open_port_stream(self._connection, port)

    # --- processes: background commands, shell sessions, PTYs ---

    @property
    def procs(self) -> ProcessOps:
        """Background commands, shell sessions and terminals (``agentclient._procs``)."""
        return ProcessOps(self._connection)


def _close(conn: Connection | None, sock: socket.socket) -> None:
    if conn is not None:
        conn.close()
    else:
        sock.close()


async def _final(channel: Channel) -> Header:
    header, _ = await channel.receive()
    if header["t"] != RES:
        raise AgentProtocolError(f"expected a result, got {header['t']!r}")
    return header
