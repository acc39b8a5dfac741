"""Blocking calls (disk I/O, tree walks, archive work) on worker threads, results to the loop.

Imported on the first file operation, not at start (with ``threading``: importing it here, on
the main thread, also keeps a later import by a worker, say ``zipfile``'s, from taking that
worker for the main thread and making interpreter exit wait for it). Daemon threads are fed
from one queue under one lock; at most ``MAX_WORKERS`` run at once, more calls queue. A worker
idle for ``IDLE_EXIT`` seconds ends, so an idle sandbox holds no thread stacks. A finished
call is handed to the loop with ``call_soon_threadsafe``, which wakes it through its pipe.
"""

from __future__ import annotations

import _thread
import os
import threading

from .futures import Future
from .loop import Loop, get_loop

TYPE_CHECKING = False
if TYPE_CHECKING:
    from _thread import LockType
    from collections import deque
    from typing import Any, Callable, TypeVar

    T = TypeVar("T")
    Job = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]
else:
    from _collections import deque

MAX_WORKERS = min(32, (os.cpu_count() or 1) + 4)  # what asyncio's default executor uses
IDLE_EXIT = 60.0


class Stop:
    """Set (from the loop) when the op that started a call was cancelled; the worker polls it
    between steps and gives up (see ``fsutil.check``)."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


class Workers:
    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self._lock = _thread.allocate_lock()  # guards the three fields below
        self._jobs: deque[Job] = deque()
        self._idle: list[LockType] = []  # one held gate per waiting worker; released to wake it
        self._threads = 0

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            self._jobs.append((future, fn, args))
            if self._idle:
                self._idle.pop().release()
                return future
            if self._threads >= MAX_WORKERS:
                return future  # every worker is busy; one takes it when done
            self._threads += 1
        threading.Thread(target=self._work, name="voidrun-worker", daemon=True).start()
        return future

    def _work(self) -> None:
        gate = _thread.allocate_lock()
        gate.acquire()
        while True:
            with self._lock:
                job = self._jobs.popleft() if self._jobs else None
                if job is None:
                    self._idle.append(gate)
            if job is not None:
                self._run(*job)
                del job  # hold no references while idle
            elif not gate.acquire(timeout=IDLE_EXIT):
                with self._lock:
                    if gate in self._idle:  # nobody woke us: leave
                        self._idle.remove(gate)
                        self._threads -= 1
                        return
                gate.acquire()  # woken just as the wait ran out: take the release

    def _run(self, future: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            result = fn(*args)
        except BaseException as exc:
            self.loop.call_soon_threadsafe(_fail, future, exc)
        else:
            self.loop.call_soon_threadsafe(_succeed, future, result)


def _succeed(future: Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


_workers: Workers | None = None


def run_in_thread(fn: Callable[..., T], *args: Any) -> Future[T]:
    """Call ``fn(*args)`` on a worker thread; the future resolves in the loop."""
    global _workers
    loop = get_loop()
    if _workers is None or _workers.loop is not loop:
        _workers = Workers(loop)
    return _workers.submit(fn, *args)
