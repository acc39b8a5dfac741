"""A bash context: one persistent ``bash`` process (Debian has no Jupyter bash kernel), on
``PipeContext``, the persistent-process machinery it shares with the javascript context.

Each cell is written to a file and ``source``d by that bash, so variables, functions, ``cd``
and exports persist. Its end is told by a marker only this execution knows (a random token),
printed after it on stdout (with the cell's exit status) and on stderr, so whatever the cell
prints, and however it interleaves, nothing is lost or cut early. The cell reads /dev/null,
never the shell's own input. An interrupt is SIGINT to the shell's process group: the running
command dies, the shell's trap returns from the cell and the shell lives on.
"""

from __future__ import annotations

import codecs
import json
import os
import queue
import secrets
import shlex
import signal
import subprocess
import tempfile
import threading
import time
from typing import Any

from . import wire

POLL = 1.0
DRAIN = 5.0
EXIT_GRACE = 2.0  # for the other stream's end once the shell exited


class ShellExitedError(wire.ContextDiedError):
    pass


class PipeContext:
    """A persistent interpreter process on pipes: cells go to its stdin, their ends are told
    by the marker on stdout and stderr and, with ``control``, by one JSON line on a pipe of its
    own (fd number appended to ``argv``)."""

    language = ""
    name = ""
    control = False

    def __init__(self, cwd: str) -> None:
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.chunks: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.dir = tempfile.mkdtemp(prefix=f"voidrun-{self.language}-")
        self.start()

    def argv(self) -> list[str]:
        raise NotImplementedError

    def send(self, code: str, env: dict[str, str], marker: str) -> None:
        raise NotImplementedError

    def finish(self, status: int, reply: dict[str, Any] | None, emit: wire.Emit) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self.chunks = queue.Queue()
        argv = self.argv()
        keep: tuple[int, ...] = ()
        if self.control:
            read_end, write_end = os.pipe()
            argv, keep = [*argv, str(write_end)], (write_end,)
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=self.cwd,
                start_new_session=True,
                pass_fds=keep,
            )
        finally:
            for fd in keep:
                os.close(fd)
        pipes = [("stdout", self.proc.stdout), ("stderr", self.proc.stderr)]
        fds = [(name, pipe.fileno()) for name, pipe in pipes if pipe is not None]
        if self.control:
            fds.append(("control", read_end))
        for stream, fd in fds:
            threading.Thread(target=_pump, args=(fd, stream, self.chunks), daemon=True).start()

    def restart(self) -> None:
        self.shutdown()
        self.start()

    def shutdown(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()

    def interrupt(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
            except OSError:
                pass

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def execute(self, code: str, env: dict[str, str], emit: wire.Emit) -> None:
        if not self.alive():
            self.restart()
        marker = f"__voidrun_end_{secrets.token_hex(16)}__"
        self.send(code, env, marker)
        reader = _Reader(marker.encode(), self.control)
        try:
            self._follow(reader, emit)
        except ShellExitedError:
            raise  # the caller restarts the context
        except BaseException:
            self.interrupt()
            if not self._follow_quietly(reader):
                self.restart()
            raise
        self.finish(reader.status, reader.reply, emit)

    def _write(self, data: bytes) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except OSError as exc:
            raise ShellExitedError(f"{self.name} exited") from exc

    def _follow(self, reader: _Reader, emit: wire.Emit) -> None:
        while not reader.done():
            try:
                stream, data = self.chunks.get(timeout=POLL)
            except queue.Empty:
                emit(wire.KEEPALIVE)
                continue
            if not data:
                self._last_words(reader, stream, emit)
                raise ShellExitedError(f"{self.name} exited")
            text = reader.feed(stream, data)
            if text:
                emit(wire.output(stream, text))

    def _last_words(self, reader: _Reader, closed: str, emit: wire.Emit) -> None:
        """The process exited: what its other streams still had (their pumps may be behind),
        and what was held back."""
        open_streams = {"stdout", "stderr"} - {closed}
        give_up = time.monotonic() + EXIT_GRACE
        while open_streams and time.monotonic() < give_up:
            try:
                stream, data = self.chunks.get(timeout=0.1)
            except queue.Empty:
                continue
            if not data:
                open_streams.discard(stream)
                continue
            text = reader.feed(stream, data)
            if text:
                emit(wire.output(stream, text))
        for name in ("stdout", "stderr"):
            held = reader.rest(name)
            if held:
                emit(wire.output(name, held))

    def _follow_quietly(self, reader: _Reader) -> bool:
        give_up = time.monotonic() + DRAIN
        while not reader.done() and time.monotonic() < give_up:
            try:
                stream, data = self.chunks.get(timeout=0.2)
            except queue.Empty:
                continue
            if not data:
                return False
            reader.feed(stream, data)
        return reader.done()


class BashContext(PipeContext):
    language = "bash"
    name = "bash"

    def argv(self) -> list[str]:
        return ["bash", "--noprofile", "--norc"]

    def send(self, code: str, env: dict[str, str], marker: str) -> None:
        cell = os.path.join(self.dir, "cell.sh")
        with open(cell, "w", encoding="utf-8") as f:
            f.write(code + "\n")
        assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        self._write(
            (
                f"trap 'return 130' INT; {assigns} source {shlex.quote(cell)} </dev/null; "
                f"__voidrun_rc=$?; trap - INT; printf '%s %d\\n' {marker} $__voidrun_rc; "
                f"printf '%s\\n' {marker} >&2\n"
            ).encode()
        )

    def finish(self, status: int, reply: dict[str, Any] | None, emit: wire.Emit) -> None:
        if status:
            emit(wire.error("ExitCode", str(status), ""))


class _Reader:
    """Splits each stream at this execution's marker; text before it is the cell's output."""

    def __init__(self, marker: bytes, control: bool = False) -> None:
        self.marker = marker
        self.buf = {"stdout": b"", "stderr": b""}
        self.ended = {"stdout": False, "stderr": False}
        self.decoders = {
            name: codecs.getincrementaldecoder("utf-8")(errors="replace") for name in self.buf
        }
        self.status = 0
        self.control = control
        self.control_buf = b""
        self.reply: dict[str, Any] | None = None

    def done(self) -> bool:
        return all(self.ended.values()) and (not self.control or self.reply is not None)

    def feed(self, stream: str, data: bytes) -> str:
        if stream == "control":
            self.control_buf += data
            if b"\n" in self.control_buf and self.reply is None:
                line, self.control_buf = self.control_buf.split(b"\n", 1)
                try:
                    reply = json.loads(line)
                except ValueError:
                    reply = None
                self.reply = reply if isinstance(reply, dict) else {}
            return ""
        if self.ended[stream]:
            return ""
        buf = self.buf[stream] + data
        at = buf.find(self.marker)
        if at >= 0:
            rest = buf[at + len(self.marker) :]
            if stream == "stdout" and b"\n" not in rest:
                self.buf[stream] = buf  # the status is still on its way
                return self.decoders[stream].decode(b"")
            if stream == "stdout":
                try:
                    self.status = int(rest.split(b"\n", 1)[0].strip() or b"0")
                except ValueError:
                    self.status = 1
            self.ended[stream] = True
            self.buf[stream] = b""
            return self.decoders[stream].decode(buf[:at], final=True)
        # Hold back only a tail that could be the start of the marker.
        keep = next(
            (
                k
                for k in range(min(len(buf), len(self.marker) - 1), 0, -1)
                if buf.endswith(self.marker[:k])
            ),
            0,
        )
        out, self.buf[stream] = buf[: len(buf) - keep], buf[len(buf) - keep :]
        return self.decoders[stream].decode(out)

    def rest(self, stream: str) -> str:
        """What is held back of ``stream`` (the shell died before its marker)."""
        held, self.buf[stream] = self.buf[stream], b""
        return self.decoders[stream].decode(held, final=True)


def _pump(fd: int, name: str, chunks: queue.Queue[tuple[str, bytes]]) -> None:
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        chunks.put((name, data))
        if not data:
            return
