"""Non-blocking file descriptors on the loop: pipes, the terminal master, sockets, inotify;
and :class:`Reader`/:class:`WriteBuffer`, the two ways the agent moves bytes through them when
no coroutine waits (coroutines use ``read_some``/``wait_writable``).

An :class:`Fd` is registered with epoll once, edge-triggered, for its whole life, and keeps two
flags: ``readable`` and ``writable``. An edge sets a flag (and calls ``on_readable`` /
``on_writable``); only an operation that would block clears it. So a reader that pauses (because
its consumer is slow) needs no system call to pause or to resume: it just stops reading, and
goes on later while the flag is still set. Both flags start set: the first operation finds out.
"""

from __future__ import annotations

import errno
import os

from .futures import Future
from .loop import EDGE, FAILED, READ_EVENTS, WRITE_EVENTS, get_loop
from .tasks import resolve

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Sequence

CHUNK = 64 * 1024


class Fd:
    def __init__(
        self,
        fd: int,
        *,
        read: bool = True,
        write: bool = False,
        on_readable: Callable[[], None] | None = None,
        on_writable: Callable[[], None] | None = None,
    ) -> None:
        self.fd = fd
        self.readable = read
        self.writable = write
        self.on_readable = on_readable
        self.on_writable = on_writable
        self.closed = False
        self.hangup = False  # the other end is gone (EPOLLHUP/EPOLLERR seen)
        self._read_waiter: Future[None] | None = None
        self._write_waiter: Future[None] | None = None
        os.set_blocking(fd, False)
        events = EDGE | (READ_EVENTS if read else 0) | (WRITE_EVENTS if write else 0)
        self._loop = get_loop()
        self._loop.register(fd, events, self._event)
        self._reads, self._writes = read, write

    def _event(self, events: int) -> None:
        if events & FAILED:
            self.hangup = True
        if self._reads and events & READ_EVENTS:
            self.readable = True
            if self._read_waiter is not None:
                resolve(self._read_waiter, None)
            if self.on_readable is not None:
                self.on_readable()
        if self._writes and events & WRITE_EVENTS and not self.closed:
            self.writable = True
            if self._write_waiter is not None:
                resolve(self._write_waiter, None)
            if self.on_writable is not None:
                self.on_writable()

    async def wait_readable(self) -> None:
        while not self.readable and not self.closed:
            self._read_waiter = Future()
            try:
                await self._read_waiter
            finally:
                self._read_waiter = None

    async def wait_writable(self) -> None:
        while not self.writable and not self.closed:
            self._write_waiter = Future()
            try:
                await self._write_waiter
            finally:
                self._write_waiter = None

    def _check_open(self) -> None:
        if self.closed:  # the number may belong to another file by now
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    def read(self, size: int) -> bytes | None:
        """Up to ``size`` bytes, ``b""`` at EOF, None if nothing is there yet."""
        self._check_open()
        try:
            return os.read(self.fd, size)
        except BlockingIOError:
            self.readable = False
            return None

    async def read_some(self, size: int) -> bytes:
        """Wait for at least one byte (or EOF, ``b""``) and return up to ``size`` bytes."""
        while True:
            await self.wait_readable()
            data = self.read(size)
            if data is not None:
                return data

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Bytes written; 0 when the fd is full (``writable`` is then clear)."""
        self._check_open()
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            self.writable = False
            return 0

    def writev(self, buffers: Sequence[bytes | memoryview]) -> int:
        self._check_open()
        try:
            return os.writev(self.fd, buffers)
        except BlockingIOError:
            self.writable = False
            return 0

    def close(self) -> None:
        """Unregister and close; a coroutine waiting on it wakes up and finds it closed."""
        if self.closed:
            return
        self.closed = True
        self._loop.unregister(self.fd)
        os.close(self.fd)
        for waiter in (self._read_waiter, self._write_waiter):
            if waiter is not None:
                resolve(waiter, None)


class Reader:
    """Hands what arrives on an :class:`Fd` to ``on_data`` as it arrives, until EOF (then
    ``on_eof``); for output nobody waits on (background commands, terminals, inotify).

    One read per loop round, so a program that writes without pause cannot starve the loop.
    ``pause``/``resume`` stop and restart reading (the writer then blocks on a full pipe or
    terminal: that is the backpressure). A read error counts as EOF (a terminal's master reads
    EIO once every holder of the slave side has closed it).
    """

    def __init__(
        self,
        fd: Fd,
        on_data: Callable[[bytes], None],
        on_eof: Callable[[], None],
        size: int = 64 * 1024,
    ) -> None:
        self.fd = fd
        self.on_data = on_data
        self.on_eof = on_eof
        self.size = size
        self.paused = False
        self.eof = False
        self._scheduled = False
        fd.on_readable = self._edge

    def _edge(self) -> None:
        if not self._scheduled:
            self._read_once()

    def _read_once(self) -> None:
        self._scheduled = False
        if self.paused or self.eof or self.fd.closed:
            return
        try:
            data = self.fd.read(self.size)
        except OSError:
            data = b""
        if data is None:
            return  # drained: the next edge brings us back
        if not data:
            self.eof = True
            self.on_eof()
            return
        self.on_data(data)
        self._again()

    def _again(self) -> None:
        if not self._scheduled and not self.paused:
            self._scheduled = True
            get_loop().call_soon(self._read_once)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            if self.fd.readable:
                self._again()


class WriteBuffer:
    """Bytes queued for an :class:`Fd` and written as it accepts them (stdin of a background
    command, a terminal's input). A write error drops what is queued and sets ``failed``."""

    def __init__(self, fd: Fd) -> None:
        self.fd = fd
        self.pending = bytearray()
        self.failed = False
        self._close_when_empty = False
        fd.on_writable = self.flush

    def write(self, data: bytes) -> None:
        self.pending += data
        self.flush()

    def close_when_flushed(self) -> None:
        self._close_when_empty = True
        self.flush()

    @property
    def closing(self) -> bool:
        return self._close_when_empty or self.failed or self.fd.closed or self.fd.hangup

    def flush(self) -> None:
        if self.fd.closed:
            return
        try:
            while self.pending and self.fd.writable:
                del self.pending[: self.fd.write(memoryview(self.pending)[:CHUNK])]
        except OSError:
            self.pending.clear()
            self.failed = True
        if self._close_when_empty and not self.pending:
            self.fd.close()
