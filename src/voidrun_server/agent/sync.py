"""``Event``: a flag coroutines can wait for, with an optional time limit (in seconds)."""

from __future__ import annotations

from .futures import Future
from .loop import get_loop
from .tasks import resolve


class Event:
    def __init__(self) -> None:
        self._set = False
        self._waiters: list[Future[bool]] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if not self._set:
            self._set = True
            for waiter in self._waiters:
                resolve(waiter, True)

    def clear(self) -> None:
        self._set = False

    async def wait(self, limit: float | None = None) -> bool:
        """True once set; False if ``limit`` seconds pass first."""
        if self._set:
            return True
        if limit is not None and limit <= 0:
            return False
        waiter: Future[bool] = Future()
        self._waiters.append(waiter)
        timer = None if limit is None else get_loop().call_later(limit, resolve, waiter, False)
        try:
            return await waiter
        finally:
            self._waiters.remove(waiter)
            if timer is not None:
                timer.cancel()
