"""Tasks drive ``async def`` coroutines on the loop; ``wait``, ``sleep`` and ``run`` build on them.

A task sends ``None`` into its coroutine until the coroutine yields a pending
:class:`~.futures.Future` (which ``await future`` does), then sleeps until that future is done
and resumes the coroutine with its result, or throws its exception in. ``cancel`` cancels the
awaited future, so the coroutine sees :class:`~.futures.CancelledError` at its ``await`` and may
clean up (even ``await`` more) before it ends; a task whose coroutine swallows the cancellation
simply goes on.
"""

from __future__ import annotations

from . import log
from .futures import CancelledError, Future
from .loop import Loop, get_loop, set_loop

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Collection, Coroutine, TypeVar

    T = TypeVar("T")
else:
    T = None


class Task(Future[T]):
    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        super().__init__()
        self._coro = coro
        self._waiting: Future[Any] | None = None
        self._must_cancel = False
        self._loop = get_loop()
        self._loop.tasks.add(self)
        self._loop.call_soon(self._step, None)

    def cancel(self) -> bool:
        if self.done():
            return False
        if self._waiting is not None and self._waiting.cancel():
            return True  # _wakeup throws CancelledError into the coroutine
        self._must_cancel = True  # a step is already scheduled; it throws instead of sending
        return True

    def _step(self, exc: BaseException | None) -> None:
        if self.done():
            return
        if self._must_cancel:
            self._must_cancel = False
            if not isinstance(exc, CancelledError):
                exc = CancelledError()
        self._waiting = None
        try:
            self._run(exc)
        finally:
            if self.done():
                self._loop.tasks.discard(self)

    def _run(self, exc: BaseException | None) -> None:
        try:
            result = self._coro.send(None) if exc is None else self._coro.throw(exc)
        except StopIteration as stop:
            if self._must_cancel:  # cancelled in its last step
                self._must_cancel = False
                Future.cancel(self)
            else:
                self.set_result(stop.value)
        except CancelledError:
            Future.cancel(self)
        except (KeyboardInterrupt, SystemExit) as error:
            self.set_exception(error)
            raise
        except BaseException as error:
            if not self._callbacks:  # nobody awaits or waits for this task: say it failed
                log.error("task %r failed: %s: %s", self._coro, type(error).__name__, error)
            self.set_exception(error)
        else:
            if isinstance(result, Future):
                self._waiting = result
                result.add_done_callback(self._wakeup)
                if self._must_cancel and result.cancel():
                    self._must_cancel = False
            else:
                problem = RuntimeError(f"task {self._coro!r} yielded {result!r}, not a Future")
                self._loop.call_soon(self._step, problem)

    def _wakeup(self, future: Future[Any]) -> None:
        try:
            future.result()
        except BaseException as exc:
            self._step(exc)
        else:
            self._step(None)


async def wait(
    futures: Collection[Future[Any]],
    limit: float | None = None,
    first_exception: bool = False,
) -> tuple[set[Future[Any]], set[Future[Any]]]:
    """``(done, pending)`` once all are done, or the first fails (``first_exception``), or
    ``limit`` seconds pass. Nothing is cancelled, neither then nor when the caller is."""
    pending = {f for f in futures if not f.done()}
    failed = first_exception and any(
        f.done() and not f.cancelled() and f.exception() is not None for f in futures
    )
    if pending and not failed and (limit is None or limit > 0):
        waiter: Future[None] = Future()

        def check(f: Future[Any]) -> None:
            pending.discard(f)
            if waiter.done():
                return
            if not pending or (first_exception and not f.cancelled() and f.exception() is not None):
                waiter.set_result(None)

        timer = None if limit is None else get_loop().call_later(limit, resolve, waiter, None)
        for f in list(pending):
            f.add_done_callback(check)
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            for f in futures:
                f.remove_done_callback(check)
    done = {f for f in futures if f.done()}
    return done, {f for f in futures if not f.done()}


def resolve(future: Future[T], value: T) -> None:
    """``future.set_result(value)`` unless it is already done (cancelled, say): for timers."""
    if not future.done():
        future.set_result(value)


async def sleep(delay: float) -> None:
    waiter: Future[None] = Future()
    timer = get_loop().call_later(delay, resolve, waiter, None)
    try:
        await waiter
    finally:
        timer.cancel()


def _reported(task: Future[Any]) -> None:
    pass


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a new loop until it is done, then cancel the tasks still running and let
    them finish (as ``asyncio.run`` does); the loop is closed afterwards."""
    loop = Loop()
    set_loop(loop)
    try:
        task = Task(coro)
        task.add_done_callback(_reported)  # its outcome is run()'s: not a failure to log
        try:
            loop.run_until(task.done)
        finally:
            for other in list(loop.tasks):
                other.cancel()
            loop.run_until(lambda: not loop.tasks)
        return task.result()
    finally:
        set_loop(None)
        loop.close()
