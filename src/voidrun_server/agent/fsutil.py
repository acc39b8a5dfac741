"""Helpers shared by the file-system ops: path normalisation, cancellable worker threads,
shell-style error messages and batched JSON replies."""

from __future__ import annotations

import posixpath

from .args import abs_path
from .files import os_error
from .futures import CancelledError, shield
from .jsonc import dumps
from .protocol import IO_ERROR, OpError
from .threads import Stop, run_in_thread

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, TypeVar

    T = TypeVar("T")
    Args = Dict[str, Any]
    Reply = Dict[str, Any]

ITEMS_BATCH = 128 * 1024


def norm_path(args: Args, key: str = "path") -> str:
    """Absolute and collapsed (``/a/../b//c`` -> ``/b/c``); the sandbox root is ``/``."""
    path = posixpath.normpath(abs_path(args, key))
    return "/" + path.lstrip("/")


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(stop, *args)`` in a thread; on cancellation set ``stop`` and wait for it.

    Waiting matters: the op's caller may reuse or delete what the thread still touches.
    """
    stop = Stop()
    fut = run_in_thread(fn, stop, *args)
    try:
        return await shield(fut)
    except CancelledError:
        stop.set()
        while not fut.done():
            try:
                await shield(fut)
            except (CancelledError, Exception):  # cancelled again, or the call failed
                pass
        raise


class ToolError(Exception):
    """An op failed for a reason that is not an errno (a corrupt archive, a bad copy)."""


class Stopped(Exception):
    """Raised inside a worker thread when its op was cancelled."""


def check(stop: Stop) -> None:
    if stop.is_set():
        raise Stopped()


def fail(tool: str, path: str, exc: OSError) -> OpError:
    """An error worded like the shell tool's, with the protocol code of the errno."""
    reason = exc.strerror or str(exc)
    return OpError(os_error(exc, path).code, f"{tool}: {path}: {reason}")


async def run(tool: str, path: str, fn: Callable[..., T], *args: Any) -> T:
    try:
        return await in_thread(fn, *args)
    except OSError as exc:  # shutil.Error too: it is an OSError
        raise fail(tool, getattr(exc, "filename", None) or path, exc) from None
    except ToolError as exc:
        raise OpError(IO_ERROR, f"{tool}: {exc}") from None


def ndjson_batches(items: List[Any]) -> List[bytes]:
    """Items as NDJSON in ~128 KiB pieces (for channel "items"). Flow control may split a
    piece across frames anywhere, so the client reassembles lines; CPU work, run it in the
    op's worker thread for big listings."""
    batches: List[bytes] = []
    batch: List[str] = []
    size = 0
    for item in items:
        line = dumps(item) + "\n"  # ASCII: surrogate escapes survive
        batch.append(line)
        size += len(line)
        if size >= ITEMS_BATCH:
            batches.append("".join(batch).encode())
            batch, size = [], 0
    if batch:
        batches.append("".join(batch).encode())
    return batches
