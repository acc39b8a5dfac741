"""``exec`` and ``exec.stream``: run a shell command in its own session and collect its output.

Each command gets a new session (so its process group id is its pid) and is killed as a whole
group: a timed-out ``sleep 100 & sleep 100`` must not leave the background sleep behind. Exit
statuses come from the reaper (see ``reaper``). A command is done when its leader has exited
*and* its stdout/stderr reached EOF, the same rule as ``subprocess.run``: a background child
still holding the pipes keeps it running until the timeout. Redirect such children
(``cmd >/dev/null 2>&1 &``) to detach them.

Every command is ``shell -c COMMAND``, except plain ones that ``direct`` runs exactly as the
shell would have, without starting the shell. In an image without a shell only plain commands
run (``direct.without_shell``); others are refused with what to install.
"""

from __future__ import annotations

import os

from . import users
from .args import abs_path, env_map, opt_int, opt_number, req_str
from .context import DEFAULT_MAX_OUTPUT, AgentContext, default_cwd, kill_group
from .direct import DirectExec, without_shell
from .fdio import Fd
from .protocol import NOT_FOUND, PERMISSION_DENIED, SPAWN_FAILED, OpError
from .reaper import exit_code
from .spawn import SpawnError
from .tasks import Task, wait

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Awaitable, Callable, Mapping

    from .futures import Future
    from .stream import Stream

    Sink = Callable[[bytes], Awaitable[None]]
    SizeHint = Callable[[], Awaitable[int]]

CAPTURE_CHUNK = 64 * 1024
# After killing a timed-out group, how long to wait for pipes to close. Something outside the
# group (a process that called setsid) may hold them open forever; we must still answer.
KILL_GRACE = 2.0
TIMEOUT_EXIT_CODE = 124


class Command:
    def __init__(self, ctx: AgentContext, args: Mapping[str, Any]) -> None:
        self.command = req_str(args, "command")
        extra = env_map(args)
        self.env = ctx.exec_env(extra)
        self.user = users.for_request(args, self.env, extra)
        if args.get("cwd") is None:
            self.cwd = default_cwd(self.env)
        else:
            self.cwd = abs_path(args, "cwd")
            if not os.path.isdir(self.cwd):
                raise OpError(NOT_FOUND, f"working directory {self.cwd!r} does not exist")
        timeout = opt_number(args, "timeout")
        self.timeout = timeout or None  # 0 means no limit


class Started:
    """A running command: its pid (= process group), exit future and our ends of its pipes."""

    def __init__(
        self, pid: int, exited: Future[int], stdin: int | None, stdout: int, stderr: int
    ) -> None:
        self.pid, self.exited = pid, exited
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr


def start(ctx: AgentContext, cmd: Command, with_stdin: bool) -> Started:
    """Start ``cmd`` with pipes for stdout and stderr, and for stdin (else ``/dev/null``)."""
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    in_write = None
    if with_stdin:
        in_read, in_write = os.pipe()
    else:
        in_read = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        pid, exited = _start(ctx, cmd, (in_read, out_write, err_write))
    except BaseException:
        for fd in (out_read, err_read, in_write):
            if fd is not None:
                os.close(fd)
        raise
    finally:
        for fd in (in_read, out_write, err_write):
            os.close(fd)
    return Started(pid, exited, in_write, out_read, err_read)


def _start(ctx: AgentContext, cmd: Command, fds: tuple[int, int, int]) -> tuple[int, Future[int]]:
    creds = cmd.user.spawn_ids() if cmd.user is not None else None
    plan = ctx.family(DirectExec).plan(cmd.command, cmd.env, cmd.cwd)
    if plan is not None:
        program, argv, env = plan
        try:
            return ctx.start(argv, program, env, cmd.cwd, fds, creds=creds)
        except OSError:
            pass  # the shell runs it instead, and reports or handles what went wrong as ever
    if ctx.shell is None and (bare := without_shell(cmd.command, cmd.env)) is not None:
        program, argv = bare
    else:
        program = ctx.need_shell("commands with shell syntax (`sh -c COMMAND`)")
        argv = [program, "-c", cmd.command]
    try:
        return ctx.start(argv, program, cmd.env, cmd.cwd, fds, creds=creds)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise OpError(NOT_FOUND, f"cannot start {program} in {cmd.cwd!r}: {exc}") from None
    except PermissionError as exc:
        raise OpError(PERMISSION_DENIED, f"cannot start {program}: {exc}") from None
    except (OSError, ValueError, SpawnError) as exc:
        raise OpError(SPAWN_FAILED, f"cannot start {program}: {exc}") from None


async def run(
    ctx: AgentContext,
    cmd: Command,
    on_stdout: Sink,
    on_stderr: Sink,
    size_hint: SizeHint,
    on_started: Callable[[int], Awaitable[None]] | None = None,
) -> tuple[int, bool]:
    """Run ``cmd`` to completion; return (exit code, timed out).

    If this coroutine is cancelled or a sink fails (client gone), the whole group is killed.
    """
    proc = start(ctx, cmd, with_stdin=False)
    pgid, exited = proc.pid, proc.exited
    pipes = [Fd(proc.stdout), Fd(proc.stderr)]
    pumps: list[Task[None]] = []
    finished = False
    try:
        if on_started is not None:
            await on_started(pgid)
        pumps = [Task(_pump(pipes[0], on_stdout, size_hint))]
        pumps.append(Task(_pump(pipes[1], on_stderr, size_hint)))
        done, pending = await wait([exited, *pumps], limit=cmd.timeout, first_exception=True)
        for task in done:
            task.result()  # a failed sink: the client went away
        timed_out = bool(pending)
        if timed_out:
            kill_group(pgid)
            await exited
            await wait(pumps, limit=KILL_GRACE)
        finished = True
        return (TIMEOUT_EXIT_CODE if timed_out else exit_code(exited.result())), timed_out
    finally:
        if not finished or not exited.done():
            kill_group(pgid)
        ctx.finished(pgid)
        await _stop(pumps)
        for pipe in pipes:
            pipe.close()


async def _pump(pipe: Fd, sink: Sink, size_hint: SizeHint) -> None:
    """Move a pipe's bytes to ``sink``, taking them only when the sink can take them: a slow
    consumer leaves them in the pipe, and the command blocks on it."""
    while True:
        data = await pipe.read_some(await size_hint())
        if not data:
            return
        await sink(data)


async def _stop(tasks: list[Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    if tasks:
        await wait(tasks)


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


def timeout_note(timeout: float | None, tail: bytes) -> bytes:
    sep = b"\n" if tail and not tail.endswith(b"\n") else b""
    return sep + b"voidrun: command timed out after %gs; its process group was killed\n" % (
        timeout or 0
    )


async def op_exec(ctx: AgentContext, stream: Stream, args: dict[str, Any]) -> dict[str, Any]:
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


async def op_exec_stream(ctx: AgentContext, stream: Stream, args: dict[str, Any]) -> dict[str, Any]:
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
