"""``file.read`` and ``file.write``, done with syscalls (never by building shell strings).

Disk I/O runs in worker threads so a slow disk or a long fsync stalls only its own request, not
every connection of the sandbox. Writes go to a temp file in the target's directory and are
renamed into place after fsync, so readers see the old file or the whole new one, never half.
"""

from __future__ import annotations

import errno
import os
import stat

from .args import abs_path, bad, opt_int
from .futures import CancelledError, shield
from .protocol import (
    IO_ERROR,
    IS_A_DIRECTORY,
    NOT_A_DIRECTORY,
    NOT_A_FILE,
    NOT_FOUND,
    PERMISSION_DENIED,
    OpError,
)
from .threads import run_in_thread

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Optional, Tuple, TypeVar

    from .context import AgentContext
    from .stream import Stream

    T = TypeVar("T")


async def blocking(
    fn: Callable[..., T], *args: Any, orphan: Optional[Callable[[T], None]] = None
) -> T:
    """Run ``fn`` in a thread. On cancellation, wait for the thread before unwinding.

    Callers close file descriptors in ``finally``; closing one while a thread still reads it
    could make that thread read whatever file reuses the number next. If the call completed
    but nobody is left to take its result, ``orphan`` releases it (closes an fd, removes a file).
    """
    fut = run_in_thread(fn, *args)
    try:
        return await shield(fut)
    except CancelledError:
        while not fut.done():
            try:
                await shield(fut)
            except (CancelledError, Exception):  # cancelled again, or the call failed
                pass
        if not fut.cancelled() and fut.exception() is None and orphan is not None:
            orphan(fut.result())
        raise


def os_error(exc: OSError, path: str) -> OpError:
    reason = exc.strerror or str(exc)
    if isinstance(exc, FileNotFoundError):
        return OpError(NOT_FOUND, f"{path}: no such file or directory")
    if isinstance(exc, IsADirectoryError):
        return OpError(IS_A_DIRECTORY, f"{path} is a directory")
    if isinstance(exc, NotADirectoryError):
        return OpError(NOT_A_DIRECTORY, f"a parent of {path} is not a directory")
    if isinstance(exc, PermissionError):
        return OpError(PERMISSION_DENIED, f"{path}: {reason}")
    return OpError(IO_ERROR, f"{path}: {reason}")


def open_for_read(path: str) -> Tuple[int, os.stat_result]:
    # O_NONBLOCK so that opening a FIFO fails the type check below instead of hanging a thread.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if not stat.S_ISREG(st.st_mode):
            raise OpError(NOT_A_FILE, f"{path} is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


async def op_file_read(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
    path = abs_path(args)
    try:
        fd, st = await blocking(open_for_read, path, orphan=lambda r: os.close(r[0]))
    except OSError as exc:
        raise os_error(exc, path) from None
    try:
        await stream.send_head(
            {"size": st.st_size, "mode": stat.S_IMODE(st.st_mode), "mtime": st.st_mtime}
        )
        total = 0
        while True:
            n = await stream.wait_credit()
            try:
                data = await blocking(os.read, fd, n)
            except OSError as exc:
                raise os_error(exc, path) from None
            if not data:
                return {"size": total}
            await stream.send_data("file", data)
            total += len(data)
    finally:
        os.close(fd)


class TempFile:
    """A sibling of the target that becomes the target on ``commit`` and vanishes otherwise."""

    def __init__(self, path: str, mode: int) -> None:
        parent, name = os.path.split(path)
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        try:
            os.makedirs(parent, exist_ok=True)
        except FileExistsError:
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), parent) from None
        import tempfile  # on the first upload: it is a visible part of start-up

        self.fd: Optional[int] = None
        self.fd, self.name = tempfile.mkstemp(prefix=f".{name[:100]}.", suffix=".tmp", dir=parent)
        try:
            os.fchmod(self.fd, mode)
        except BaseException:
            self.discard()
            raise

    def write(self, data: bytes) -> None:
        assert self.fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def commit(self, path: str, durable: bool = True) -> None:
        assert self.fd is not None
        if durable:
            os.fsync(self.fd)
        fd, self.fd = self.fd, None
        os.close(fd)
        os.rename(self.name, path)
        if not durable:  # still atomic for readers; only a host crash may lose it
            return
        # Persist the rename itself; best effort, some filesystems refuse fsync on directories.
        try:
            dir_fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)

    def discard(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)
        try:
            os.unlink(self.name)
        except OSError:
            pass


async def op_file_write(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
    path = abs_path(args)
    if path.endswith("/"):
        raise bad(f"'path' must name a file, got {path!r}")
    mode = opt_int(args, "mode", 0o644)
    if mode > 0o7777:
        raise bad(f"'mode' must be at most 0o7777, got {mode:#o}")
    durable = args.get("durable", True)
    if not isinstance(durable, bool):
        raise bad(f"'durable' must be a boolean, got {type(durable).__name__}")
    try:
        tmp = await blocking(TempFile, path, mode, orphan=TempFile.discard)
    except OSError as exc:
        raise os_error(exc, path) from None
    committed = False
    try:
        total = 0
        while True:
            chunk = await stream.receive()
            if chunk is None:
                break
            await blocking(tmp.write, chunk)
            total += len(chunk)
        await blocking(tmp.commit, path, durable)
        committed = True
        return {"size": total}
    except OSError as exc:
        raise os_error(exc, path) from None
    finally:
        if not committed:
            tmp.discard()
