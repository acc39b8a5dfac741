"""Background work owned by the app's task group, which must never see an exception.

An exception that reaches the lifespan task group cancels it, and with it the sandbox service of
every org (every sandbox route answers 503 until a restart). Everything started with
:func:`spawn` or run forever by the lifespan goes through :func:`guarded`: it logs what went
wrong and ends only that piece of work.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio.abc

log = logging.getLogger(__name__)


async def guarded(name: str, work: Callable[..., Awaitable[Any]], *args: Any) -> None:
    """Run ``work(*args)``; an exception is logged, never propagated (cancellation is)."""
    try:
        await work(*args)
    except Exception:
        log.exception("background task %s failed", name)


def spawner(task_group: anyio.abc.TaskGroup) -> Callable[[Callable[[], Awaitable[Any]]], None]:
    """``spawn(work)``: start ``work()`` in ``task_group`` behind :func:`guarded`."""

    def spawn(work: Callable[[], Awaitable[Any]]) -> None:
        name = getattr(work, "__qualname__", repr(work))
        task_group.start_soon(guarded, name, work, name=name)

    return spawn
