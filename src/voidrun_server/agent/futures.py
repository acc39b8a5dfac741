"""Futures: a result that arrives later, and what a coroutine awaits.

The semantics are asyncio's where the agent relies on them: ``await future`` yields the future
to the running :class:`~.tasks.Task`, which sleeps until it is done; done callbacks run from the
loop (``call_soon``), never inside ``set_result``; cancelling a task cancels the future it
awaits, so :class:`CancelledError` (a ``BaseException``, so ``except Exception`` does not
swallow it) is thrown into the coroutine at its ``await``. :func:`shield` lets a coroutine be
cancelled while the work it awaited (a thread) carries on.
"""

from __future__ import annotations

from .loop import get_loop

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Generator, Generic, TypeVar

    T = TypeVar("T")
else:  # typing costs start-up time; generics only matter to the type checker
    T = None

    class Generic:
        def __class_getitem__(cls, item: object) -> type:
            return cls  # Future[int] is Future


_PENDING, _DONE, _CANCELLED = 0, 1, 2


class CancelledError(BaseException):
    """Thrown into a coroutine whose task was cancelled (at the ``await`` it waits in)."""


class InvalidStateError(Exception):
    """A result was set twice, or read before it was set."""


class Future(Generic[T]):
    def __init__(self) -> None:
        self._state = _PENDING
        self._result: T | None = None
        self._exception: BaseException | None = None
        self._callbacks: list[Callable[[Future[T]], object]] = []

    def done(self) -> bool:
        return self._state != _PENDING

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def result(self) -> T:
        if self._state == _CANCELLED:
            raise CancelledError()
        if self._state == _PENDING:
            raise InvalidStateError("the result is not set yet")
        if self._exception is not None:
            raise self._exception
        return self._result  # type: ignore[return-value]  # set by set_result

    def exception(self) -> BaseException | None:
        if self._state == _CANCELLED:
            raise CancelledError()
        if self._state == _PENDING:
            raise InvalidStateError("the result is not set yet")
        return self._exception

    def set_result(self, value: T) -> None:
        if self._state != _PENDING:
            raise InvalidStateError("the future is already done")
        self._result = value
        self._state = _DONE
        self._schedule_callbacks()

    def set_exception(self, exc: BaseException) -> None:
        if self._state != _PENDING:
            raise InvalidStateError("the future is already done")
        if isinstance(exc, StopIteration):  # it would end the awaiting coroutine's frame
            exc = RuntimeError("StopIteration cannot be raised into a future")
        self._exception = exc
        self._state = _DONE
        self._schedule_callbacks()

    def cancel(self) -> bool:
        if self._state != _PENDING:
            return False
        self._state = _CANCELLED
        self._schedule_callbacks()
        return True

    def add_done_callback(self, callback: Callable[[Future[T]], object]) -> None:
        if self._state != _PENDING:
            get_loop().call_soon(callback, self)
        else:
            self._callbacks.append(callback)

    def remove_done_callback(self, callback: Callable[[Future[T]], object]) -> None:
        self._callbacks = [cb for cb in self._callbacks if cb != callback]

    def _schedule_callbacks(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        if callbacks:
            loop = get_loop()
            for callback in callbacks:
                loop.call_soon(callback, self)

    def __await__(self) -> Generator[Future[Any], None, T]:
        if self._state == _PENDING:
            yield self  # the task resumes us once we are done
        return self.result()

    __iter__ = __await__


def shield(inner: Future[T]) -> Future[T]:
    """A future that follows ``inner``; cancelling it leaves ``inner`` running."""
    if inner.done():
        return inner
    outer: Future[T] = Future()

    def follow(_: Future[T]) -> None:
        if outer.done():
            return
        if inner.cancelled():
            outer.cancel()
        elif inner.exception() is not None:
            outer.set_exception(inner.exception())  # type: ignore[arg-type]
        else:
            outer.set_result(inner.result())

    inner.add_done_callback(follow)
    return outer
