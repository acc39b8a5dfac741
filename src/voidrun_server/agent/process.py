"""``exec`` and ``exec.stream``: run a shell command in its own session and collect its output.

Each command gets a new session (so its process group id is its pid) and is killed as a whole
group: a timed-out ``sleep 100 & sleep 100`` must not leave the background sleep behind. Exit
statuses come from the reaper, never from ``Popen.wait`` (see ``reaper``). A command is done
when its leader has exited *and* its stdout/stderr reached EOF, the same rule as
``subprocess.run``: a background child still holding the pipes keeps it running until the
timeout. Redirect such children (``cmd >/dev/null 2>&1 &``) to detach them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from typing import IO, Any, Awaitable, Callable, Dict, List, Mapping, Optional, Set, Tuple

from .args import abs_path, env_map, opt_int, opt_number, req_str
from .context import DEFAULT_MAX_OUTPUT, AgentContext, default_cwd
from .protocol import NOT_FOUND, PERMISSION_DENIED, SPAWN_FAILED, OpError
from .reaper import exit_code
from .stream import Stream

CAPTURE_CHUNK = 64 * 1024
PIPE_LIMIT = 64 * 1024
# After killing a timed-out group, how long to wait for pipes to close. Something outside the
# group (a process that called setsid) may hold them open forever; we must still answer.
KILL_GRACE = 2.0
TIMEOUT_EXIT_CODE = 124

Sink = Callable[[bytes], Awaitable[None]]
SizeHint = Callable[[], Awaitable[int]]


class Command:
    def __init__(self, ctx: AgentContext, args: Mapping[str, Any]) -> None:
        self.command = req_str(args, "command")
        self.env = ctx.exec_env(env_map(args))
        if args.get("cwd") is None:
            self.cwd = default_cwd(self.env)
        else:
            self.cwd = abs_path(args, "cwd")
            if not os.path.isdir(self.cwd):
                raise OpError(NOT_FOUND, f"working directory {self.cwd!r} does not exist")
        timeout = opt_number(args, "timeout")
        self.timeout = timeout or None  # 0 means no limit
        self.argv = [ctx.shell, "-c", self.command]


def popen(cmd: Command, stdin: int) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own session (so its whole group can be killed), mapping failures to
    the protocol's error codes."""
    try:
        return subprocess.Popen(
            cmd.argv,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cmd.cwd,
            env=cmd.env,
            start_new_session=True,
            close_fds=True,
        )
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise OpError(NOT_FOUND, f"cannot start {cmd.argv[0]} in {cmd.cwd!r}: {exc}") from None
    except PermissionError as exc:
        raise OpError(PERMISSION_DENIED, f"cannot start {cmd.argv[0]}: {exc}") from None
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        raise OpError(SPAWN_FAILED, f"cannot start {cmd.argv[0]}: {exc}") from None


def spawn(ctx: AgentContext, cmd: Command) -> Tuple[subprocess.Popen[bytes], asyncio.Future[int]]:
    proc = popen(cmd, subprocess.DEVNULL)
    exited = ctx.reaper.watch(proc.pid)
    # The reaper owns the exit status. A returncode keeps Popen.__del__ from calling waitpid on
    # this pid later, which could steal the status of an unrelated process that reused it.
    proc.returncode = 0
    return proc, exited


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


async def run(
    ctx: AgentContext,
    cmd: Command,
    on_stdout: Sink,
    on_stderr: Sink,
    size_hint: SizeHint,
    on_started: Optional[Callable[[int], Awaitable[None]]] = None,
) -> Tuple[int, bool]:
    """Run ``cmd`` to completion; return (exit code, timed out).

    If this coroutine is cancelled or a sink fails (client gone), the whole group is killed.
    """
    loop = asyncio.get_running_loop()
    proc, exited = spawn(ctx, cmd)
    pgid = proc.pid
    ctx.groups.add(pgid)
    assert proc.stdout is not None and proc.stderr is not None
    pipes: List[IO[bytes]] = [proc.stdout, proc.stderr]
    transports: List[asyncio.BaseTransport] = []
    pumps: List[asyncio.Task[None]] = []
    finished = False
    try:
        if on_started is not None:
            await on_started(proc.pid)
        for pipe, sink in ((proc.stdout, on_stdout), (proc.stderr, on_stderr)):
            reader = await _open_pipe(pipe, transports)
            pumps.append(loop.create_task(_pump(reader, sink, size_hint)))
        waiting: Set[asyncio.Future[Any]] = {exited, *pumps}
        done, pending = await asyncio.wait(
            waiting, timeout=cmd.timeout, return_when=asyncio.FIRST_EXCEPTION
        )
        for task in done:
            task.result()  # a failed sink: the client went away
        timed_out = bool(pending)
        if timed_out:
            kill_group(pgid)
            await exited
            await asyncio.wait(pumps, timeout=KILL_GRACE)
        finished = True
        return (TIMEOUT_EXIT_CODE if timed_out else exit_code(exited.result())), timed_out
    finally:
        if not finished or not exited.done():
            kill_group(pgid)
        ctx.groups.discard(pgid)
        ctx.reaper.forget(pgid)
        await _stop(pumps)
        for tr in transports:
            tr.close()
        for pipe in pipes[len(transports) :]:
            pipe.close()


async def _open_pipe(
    pipe: IO[bytes], transports: List[asyncio.BaseTransport]
) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=PIPE_LIMIT)

    def protocol() -> asyncio.StreamReaderProtocol:
        return asyncio.StreamReaderProtocol(reader)

    transport, _ = await asyncio.get_running_loop().connect_read_pipe(protocol, pipe)
    transports.append(transport)
    return reader


async def _pump(reader: asyncio.StreamReader, sink: Sink, size_hint: SizeHint) -> None:
    while True:
        data = await reader.read(await size_hint())
        if not data:
            return
        await sink(data)


async def _stop(tasks: List[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as lost


class Capture:
    """Keeps the first ``cap`` bytes and drops the rest, so the child never blocks on a pipe."""

    def __init__(self, cap: int) -> None:
        self.data = bytearray()
        self.cap = cap
        self.truncated = False

    async def feed(self, chunk: bytes) -> None:
        room = self.cap - len(self.data)
        if len(chunk) > room:
            self.truncated = True
            chunk = chunk[: max(room, 0)]
        self.data += chunk


def timeout_note(timeout: Optional[float], tail: bytes) -> bytes:
    sep = b"\n" if tail and not tail.endswith(b"\n") else b""
    return sep + b"voidrun: command timed out after %gs; its process group was killed\n" % (
        timeout or 0
    )


async def op_exec(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
    cmd = Command(ctx, args)
    cap = opt_int(args, "maxOutput", DEFAULT_MAX_OUTPUT)
    out, err = Capture(cap), Capture(cap)

    async def chunk_size() -> int:
        return CAPTURE_CHUNK

    code, timed_out = await run(ctx, cmd, out.feed, err.feed, chunk_size)
    if timed_out:
        err.data += timeout_note(cmd.timeout, bytes(err.data[-1:]))
    await stream.send_data("stdout", out.data)
    await stream.send_data("stderr", err.data)
    return {
        "exitCode": code,
        "timedOut": timed_out,
        "stdoutTruncated": out.truncated,
        "stderrTruncated": err.truncated,
    }


async def op_exec_stream(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
    cmd = Command(ctx, args)
    last_stderr = [b""]

    async def started(pid: int) -> None:
        await stream.send_head({"pid": pid})

    async def on_stdout(data: bytes) -> None:
        await stream.send_data("stdout", data)

    async def on_stderr(data: bytes) -> None:
        last_stderr[0] = data[-1:]
        await stream.send_data("stderr", data)

    code, timed_out = await run(ctx, cmd, on_stdout, on_stderr, stream.wait_credit, started)
    if timed_out:
        await stream.send_data("stderr", timeout_note(cmd.timeout, last_stderr[0]))
    return {"exitCode": code, "timedOut": timed_out}
