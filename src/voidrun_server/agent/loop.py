"""The agent's event loop: epoll, a queue of ready callbacks, timers, signals, and a wake-up pipe.

It is the small part of asyncio the agent needs (asyncio itself costs tens of milliseconds and
several MiB at every sandbox start). One loop runs per process, on the main thread.

* File descriptors are registered once for their whole life (``register``), usually
  edge-triggered (see ``fdio``), so pausing and resuming a reader costs no system call.
* Callbacks queued with ``call_soon`` run in the next round, after the loop has polled once,
  so a burst of work never starves I/O. ``call_later`` timers live in a heap; cancelled ones
  are skipped and compacted away when they pile up.
* Signals: a Python-level handler notes the signal and ``signal.set_wakeup_fd`` wakes the
  poll; the registered callback then runs in the loop, never inside the signal handler.
* Other threads hand callbacks over with ``call_soon_threadsafe`` through the same pipe.
"""

from __future__ import annotations

import os
import select
import time
from _heapq import heapify, heappop, heappush

from . import log

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from collections import deque
    from types import FrameType
    from typing import Any, Callable
else:
    import _signal
    from _collections import deque

READ_EVENTS = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
WRITE_EVENTS = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR
FAILED = select.EPOLLHUP | select.EPOLLERR
EDGE = select.EPOLLET
MIN_COMPACT = 100  # cancelled timers tolerated in the heap before it is rebuilt


class Handle:
    """A queued callback; ``cancel`` keeps it from running."""

    __slots__ = ("_callback", "_args", "cancelled")

    def __init__(self, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self._callback = callback
        self._args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def run(self) -> None:
        try:
            self._callback(*self._args)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            log.exception("callback %r failed", self._callback)


class Timer(Handle):
    __slots__ = ("when", "_loop")

    def __init__(
        self, when: float, callback: Callable[..., object], args: tuple[Any, ...], loop: Loop
    ) -> None:
        super().__init__(callback, args)
        self.when = when
        self._loop: Loop | None = loop  # None once out of the loop's heap

    def __lt__(self, other: Timer) -> bool:
        return self.when < other.when

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            if self._loop is not None:
                self._loop._timer_cancelled()


class Loop:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._fds: dict[int, Callable[[int], None]] = {}
        self._ready: deque[Handle] = deque()
        self._timers: list[Timer] = []
        self._cancelled_timers = 0
        self._from_threads: deque[Handle] = deque()
        self._signal_callbacks: dict[int, Callable[[], None]] = {}
        self._signal_before: dict[int, Any] = {}  # handlers to restore at close
        self._signals_seen: set[int] = set()
        self.tasks: set[Any] = set()  # unfinished tasks (see tasks.Task), cancelled at the end
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self.register(self._wake_read, READ_EVENTS, self._woken)
        self.closed = False

    # -- scheduling -------------------------------------------------------------------------

    def time(self) -> float:
        return time.monotonic()

    def call_soon(self, callback: Callable[..., object], *args: Any) -> Handle:
        handle = Handle(callback, args)
        self._ready.append(handle)
        return handle

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Timer:
        timer = Timer(time.monotonic() + delay, callback, args, self)
        heappush(self._timers, timer)
        return timer

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any) -> None:
        """From any thread: run ``callback`` in the loop soon."""
        self._from_threads.append(Handle(callback, args))
        self._wake()

    def _timer_cancelled(self) -> None:
        self._cancelled_timers += 1
        if self._cancelled_timers > MIN_COMPACT and self._cancelled_timers * 2 > len(self._timers):
            for timer in self._timers:
                if timer.cancelled:
                    timer._loop = None
            self._timers = [t for t in self._timers if not t.cancelled]
            heapify(self._timers)
            self._cancelled_timers = 0

    # -- file descriptors -------------------------------------------------------------------

    def register(self, fd: int, events: int, callback: Callable[[int], None]) -> None:
        """Call ``callback(event_mask)`` whenever epoll reports ``fd``; until ``unregister``."""
        self._epoll.register(fd, events)
        self._fds[fd] = callback

    def unregister(self, fd: int) -> None:
        """Forget ``fd``; call it before closing the fd."""
        if self._fds.pop(fd, None) is not None and not self.closed:
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass  # already closed: the kernel dropped it with the last reference

    # -- signals and threads ----------------------------------------------------------------

    def add_signal_handler(self, signum: int, callback: Callable[[], None]) -> None:
        """Run ``callback`` in the loop after ``signum`` arrives (main thread only)."""
        if not self._signal_callbacks:
            _signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)
        self._signal_callbacks[signum] = callback
        previous = _signal.signal(signum, self._noted)
        self._signal_before.setdefault(signum, previous)
        _signal.siginterrupt(signum, False)  # SA_RESTART, as asyncio sets

    def _noted(self, signum: int, frame: FrameType | None) -> None:
        self._signals_seen.add(signum)  # the wake-up fd has already woken the poll

    def _wake(self) -> None:
        try:
            os.write(self._wake_write, b"\0")
        except OSError:
            pass  # full: the loop is awake anyway; closed: the loop is gone

    def _woken(self, events: int) -> None:
        while True:
            try:
                data = os.read(self._wake_read, 4096)
            except BlockingIOError:
                break
            self._signals_seen.update(b for b in data if b)
            if len(data) < 4096:
                break
        if self._signals_seen:
            seen, self._signals_seen = self._signals_seen, set()
            for signum in sorted(seen):
                callback = self._signal_callbacks.get(signum)
                if callback is not None:
                    Handle(callback, ()).run()
        while self._from_threads:
            self._from_threads.popleft().run()

    # -- running ----------------------------------------------------------------------------

    def run_until(self, done: Callable[[], bool]) -> None:
        while not done():
            self._run_once()

    def _run_once(self) -> None:
        timeout = -1.0
        if self._ready:
            timeout = 0.0
        elif self._timers:
            timeout = max(0.0, self._timers[0].when - time.monotonic())
        for fd, events in self._epoll.poll(timeout):
            callback = self._fds.get(fd)
            if callback is not None:
                try:
                    callback(events)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException:
                    log.exception("handler of fd %d failed", fd)
        if self._timers:
            now = time.monotonic()
            while self._timers and self._timers[0].when <= now:
                timer = heappop(self._timers)
                timer._loop = None
                if timer.cancelled:
                    self._cancelled_timers -= 1
                else:
                    self._ready.append(timer)
        for _ in range(len(self._ready)):
            handle = self._ready.popleft()
            if not handle.cancelled:
                handle.run()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._signal_callbacks:
            _signal.set_wakeup_fd(-1)
            for signum, previous in self._signal_before.items():
                _signal.signal(signum, previous)
        self._epoll.close()
        os.close(self._wake_read)
        os.close(self._wake_write)


_running: Loop | None = None


def get_loop() -> Loop:
    """The loop of this process (``tasks.run`` installs it)."""
    if _running is None:
        raise RuntimeError("no agent loop is running")
    return _running


def set_loop(loop: Loop | None) -> None:
    global _running
    _running = loop
