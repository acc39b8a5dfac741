"""Read-only walks and reads: ``du``, ``search`` (``find -name``) and ``head``/``tail``.

Each runs in a worker thread that checks the op's stop flag between directories or blocks, so
a cancelled request over a huge tree frees its thread promptly. Outputs are bounded: at most
100 search results and ``maxBytes`` (default 8 MiB) of head/tail output.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat

from .args import opt_int, req_str
from .fsutil import check, norm_path, run

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List, Tuple

    from .context import AgentContext
    from .fsutil import Args, Reply
    from .stream import Stream
    from .threads import Stop

MAX_SEARCH_RESULTS = 100
DEFAULT_MAX_OUTPUT = 8 * 1024 * 1024
READ_BLOCK = 64 * 1024


def _du(stop: Stop, path: str) -> int:
    """Allocated bytes like ``du -s``: symlinks not followed, hard links counted once."""
    st = os.lstat(path)
    total = st.st_blocks * 512
    seen = set()
    pending = [path] if stat.S_ISDIR(st.st_mode) else []
    while pending:
        check(stop)
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                est = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if est.st_nlink > 1 and not stat.S_ISDIR(est.st_mode):
                if (est.st_dev, est.st_ino) in seen:
                    continue
                seen.add((est.st_dev, est.st_ino))
            total += est.st_blocks * 512
            if stat.S_ISDIR(est.st_mode):
                pending.append(entry.path)
    return total


async def op_fs_du(ctx: AgentContext, stream: Stream, args: Args) -> Reply:
    path = norm_path(args)
    return {"bytes": await run("du", path, _du, path)}


def _search(stop: Stop, root: str, pattern: str, limit: int) -> List[str]:
    """``find ROOT -name '*PATTERN*' -type f | head -LIMIT``, in sorted order."""
    import fnmatch  # it imports re: only for searches

    glob = "*" + pattern + "*"
    found: List[str] = []
    if not stat.S_ISDIR(os.lstat(root).st_mode):
        ok = os.path.isfile(root) and not os.path.islink(root)
        return [root] if ok and fnmatch.fnmatchcase(posixpath.basename(root), glob) else []
    pending = [root]
    while pending and len(found) < limit:
        check(stop)
        try:
            with os.scandir(pending.pop()) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.path)
            elif entry.is_file(follow_symlinks=False) and fnmatch.fnmatchcase(entry.name, glob):
                found.append(entry.path)
                if len(found) >= limit:
                    break
        pending.extend(reversed(subdirs))  # depth first, in name order
    return found


async def op_fs_search(ctx: AgentContext, stream: Stream, args: Args) -> Reply:
    root = norm_path(args)
    pattern = req_str(args, "pattern")
    limit = min(opt_int(args, "limit", MAX_SEARCH_RESULTS), MAX_SEARCH_RESULTS)
    return {"paths": await run("find", root, _search, root, pattern, limit)}


def _head(stop: Stop, fd: int, lines: int, limit: int) -> Tuple[bytes, bool]:
    out = bytearray()
    seen = 0  # newlines in ``out``, all of them before the line we stop at
    while len(out) < limit:
        check(stop)
        block = os.read(fd, READ_BLOCK)
        if not block:
            return bytes(out), False
        count = block.count(b"\n")
        if seen + count >= lines:
            pos = -1
            for _ in range(lines - seen):
                pos = block.find(b"\n", pos + 1)
            out += block[: pos + 1]
            break
        seen += count
        out += block
    return (bytes(out[:limit]), True) if len(out) > limit else (bytes(out), False)


def _last_lines(data: bytes, lines: int) -> bytes:
    """``tail -n``: a final line without a newline still counts as a line."""
    body = data[:-1] if data.endswith(b"\n") else data
    pos = len(body)
    for _ in range(lines):
        pos = body.rfind(b"\n", 0, pos)
        if pos < 0:
            return data
    return data[pos + 1 :]


def _tail(stop: Stop, fd: int, st: os.stat_result, lines: int, limit: int) -> bytes:
    """Regular files are read backwards from the end; pipes and /proc files (size 0) forwards,
    keeping only a window of ``limit`` bytes."""
    data = b""
    if stat.S_ISREG(st.st_mode) and st.st_size > 0:
        end = st.st_size
        while end > 0 and len(data) <= limit:
            check(stop)
            start = max(0, end - READ_BLOCK)
            data = os.pread(fd, end - start, start) + data
            end = start
            if data.count(b"\n", 0, len(data) - 1) >= lines:
                break
        return _last_lines(data, lines)
    while True:
        check(stop)
        block = os.read(fd, READ_BLOCK)
        if not block:
            return _last_lines(data, lines)
        data = (data + block)[-(limit + 1) :]


def _headtail(stop: Stop, path: str, lines: int, head: bool, limit: int) -> Tuple[bytes, bool]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        os.set_blocking(fd, True)
        if head:
            return _head(stop, fd, lines, limit)
        data = _tail(stop, fd, st, lines, limit)
        return (data[-limit:], True) if len(data) > limit else (data, False)
    finally:
        os.close(fd)


async def op_fs_headtail(ctx: AgentContext, stream: Stream, args: Args) -> Reply:
    path = norm_path(args)
    lines = max(1, opt_int(args, "lines", 10))
    head = args.get("head", True) is not False
    limit = max(1, opt_int(args, "maxBytes", DEFAULT_MAX_OUTPUT))
    tool = "head" if head else "tail"
    data, truncated = await run(tool, path, _headtail, path, lines, head, limit)
    if data:
        await stream.send_data("stdout", data)
    return {"truncated": truncated}
