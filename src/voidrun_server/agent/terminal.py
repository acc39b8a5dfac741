"""A process on a pseudo-terminal, driven without ever blocking the agent, and the
end-of-command marker that runs commands in a shell on one.

Both shell sessions (``shells``) and PTY sessions (``pty``) run on a :class:`Terminal`. The
master fd is non-blocking and read from an event-loop reader callback, so a busy or stuck
terminal never blocks the agent; the owner gets output through ``on_output`` and may ``pause``
reading (the child then blocks on a full terminal, which is the backpressure). Input is queued,
bounded, and written as the child reads it. Closing a terminal kills every process of its
session, so a deleted PTY or a closed WebSocket leaves nothing behind except what deliberately
left the session (``setsid``).
"""

from __future__ import annotations

import fcntl
import os
import struct
import termios
import tty

from .args import bad
from .context import AgentContext, kill_group
from .fdio import Fd, Reader, WriteBuffer
from .futures import Future
from .protocol import IO_ERROR, SPAWN_FAILED, OpError, is_int
from .reaper import exit_code
from .spawn import SpawnError
from .tasks import Task, wait

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from typing import Any, Callable, List, Mapping, Optional, Tuple

    from .users import Credentials

    Sink = Callable[[bytes], None]
else:
    import _signal

INPUT_LIMIT = 1024 * 1024  # input queued for a terminal whose program does not read it
READ_CHUNK = 64 * 1024
EOF_GRACE = 0.5  # after the shell exits, how long its remaining output may take to arrive


def term_size(args: Mapping[str, Any], required: bool = False) -> Tuple[int, int]:
    """``(cols, rows)`` from args: 1..500 x 1..200, default 80 x 24."""
    size = []
    for key, default, top in (("cols", 80, 500), ("rows", 24, 200)):
        value = args.get(key)
        if value is None and not required:
            value = default
        if not is_int(value) or not 1 <= value <= top:
            raise bad(f"{key!r} must be an integer from 1 to {top}")
        size.append(value)
    return size[0], size[1]


class Terminal:
    """A process group leader on a pseudo-terminal; ``ended`` resolves to its exit code."""

    def __init__(self, ctx: AgentContext, pid: int, master: int, exited: Future[int]):
        self.ctx = ctx
        self.pid = pid
        self.on_output: Callable[[bytes], None] = lambda data: None
        self.ended: Future[int] = Future()
        self._eof: Future[None] = Future()
        self._master = Fd(master, write=True)
        self._reader = Reader(self._master, self._output, self._at_eof, READ_CHUNK)
        self._reader.pause()  # until start()
        self._input = WriteBuffer(self._master)
        self._closed = False
        self._watcher = Task(self._watch(exited))

    @classmethod
    def spawn(
        cls,
        ctx: AgentContext,
        argv: List[str],
        env: Mapping[str, str],
        cwd: str,
        cols: int,
        rows: int,
        script: bool = False,
        user: Optional[Credentials] = None,
    ) -> Terminal:
        """``script``: raw mode (no echo, no line editing, no output translation), and stdout
        and stderr not the tty (``/dev/null``), so a shell starts non-interactive and reads its
        input as a script: bash looks at stdin and stderr, ash and dash at stdin and stdout.
        The caller's first line points them at the terminal (``exec >&0 2>&0``)."""
        master, slave = os.openpty()
        devnull = -1
        try:
            _set_size(master, cols, rows)
            if script:  # TCSANOW: gVisor's terminals refuse TCSAFLUSH (nothing to flush yet)
                tty.setraw(slave, termios.TCSANOW)
                devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            fds = (slave, devnull, devnull) if script else (slave, slave, slave)
            # preexec runs after setsid, before exec
            creds = user.spawn_ids() if user is not None else None
            pid, exited = ctx.start(argv, argv[0], env, cwd, fds, _take_controlling_tty, creds)
        except (OSError, ValueError, SpawnError) as exc:
            os.close(master)
            raise OpError(SPAWN_FAILED, f"cannot start {argv[0]} on a terminal: {exc}") from None
        finally:
            os.close(slave)
            if devnull >= 0:
                os.close(devnull)
        return cls(ctx, pid, master, exited)

    @property
    def master(self) -> int:
        return self._master.fd

    def start(self) -> None:
        self.resume()

    def pause(self) -> None:
        self._reader.pause()

    def resume(self) -> None:
        if not self._closed:
            self._reader.resume()

    def write(self, data: bytes) -> None:
        if self._closed:
            raise OpError(IO_ERROR, "the terminal has been closed")
        if len(self._input.pending) + len(data) > INPUT_LIMIT:
            raise OpError(IO_ERROR, "the terminal is not reading its input (buffer full)")
        self._input.write(data)

    def resize(self, cols: int, rows: int) -> None:
        if not self._closed:
            _set_size(self._master.fd, cols, rows)  # the kernel sends SIGWINCH

    def close(self) -> None:
        """Stop reading and kill every process of the terminal's session."""
        if self._closed:
            return
        self._closed = True
        self.pause()
        self._master.close()
        kill_session(self.pid)
        self.ctx.groups.discard(self.pid)

    def _output(self, data: bytes) -> None:
        self.on_output(data)

    def _at_eof(self) -> None:
        if not self._eof.done():
            self._eof.set_result(None)

    async def _watch(self, exited: Future[int]) -> None:
        status = await exited
        if not self._reader.paused and not self._reader.eof:
            await wait([self._eof], limit=EOF_GRACE)
        self.close()
        self.ended.set_result(exit_code(status))


def _set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _take_controlling_tty() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def kill_session(sid: int) -> None:
    """SIGKILL every process whose session id is ``sid`` (the terminal's whole session)."""
    kill_group(sid)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                raw = fh.read()
            if int(raw[raw.rindex(b")") + 2 :].split()[3]) == sid:
                os.kill(int(entry), _signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            continue


class MarkedCommand:
    """One command sent to a shell on a terminal; output goes to ``emit`` until the command's
    end-of-command marker appears (see ``shells`` for the protocol)."""

    def __init__(self, emit: Sink) -> None:
        self.token = os.urandom(8).hex()
        self.prefix = b"\n\x1eVR" + self.token.encode() + b":"
        self.emit = emit
        self.held = b""  # a tail that may be the start of the marker
        self.done: Future[int] = Future()

    def line(self, command: str) -> bytes:
        quoted = "'" + command.replace("'", "'\\''") + "'"
        marker = f"'\\n\\036VR{self.token}:%d\\036\\n'"
        text = f'eval {quoted}; __vr_rc=$?; printf {marker} "$__vr_rc"\n'
        return text.encode("utf-8", "surrogateescape")

    def feed(self, data: bytes) -> bytes:
        """Consume output; once the marker is found, return what followed it."""
        buf = self.held + data
        start = buf.find(self.prefix)
        if start < 0:
            keep = _partial_suffix(buf, self.prefix)
            self.held = buf[len(buf) - keep :]
            self._emit(buf[: len(buf) - keep])
            return b""
        end = buf.find(b"\x1e\n", start + len(self.prefix))
        self._emit(buf[:start])
        if end < 0:
            self.held = buf[start:]
            return b""
        self.held = b""
        try:
            code = int(buf[start + len(self.prefix) : end])
        except ValueError:
            code = -1
        self.done.set_result(code)
        return buf[end + 2 :]

    def end(self, code: int) -> None:
        """The shell itself ended (``exit``): no marker will come."""
        self._emit(self.held)
        self.held = b""
        if not self.done.done():
            self.done.set_result(code)

    def _emit(self, data: bytes) -> None:
        if data:
            self.emit(data)


def _partial_suffix(buf: bytes, prefix: bytes) -> int:
    for n in range(min(len(prefix) - 1, len(buf)), 0, -1):
        if buf.endswith(prefix[:n]):
            return n
    return 0
