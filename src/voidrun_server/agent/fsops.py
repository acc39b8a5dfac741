"""File-system ops of the files API, done with syscalls (never by building shell strings).

The reference server ran ``rm -rf``/``cp -r``/``find``... through a shell; these ops keep those
tools' semantics (``mkdir -p``, ``cp -r`` into an existing directory, ``rm -rf`` of a missing
path succeeds) without quoting pitfalls. Every op answers structured data; the server turns it
into the exec envelope the API promises. All disk work runs in worker threads, and walks check a
stop flag so a cancelled ``search`` of ``/`` does not keep a thread busy.

Ops (``req`` args -> reply)::

    fs.list     {path}                    -> data "items" (NDJSON entries), res {count}
    fs.delete   {path}                    -> res {}
    fs.mkdir    {path}                    -> res {}
    fs.touch    {path}                    -> res {}     (creates parents; keeps existing data)
    fs.stat     {path}                    -> res {path, size, mode, mtime, type}
    fs.chmod    {path, mode}              -> res {}
    fs.copy     {from, to}                -> res {}     (recursive; symlinks stay symlinks)
    fs.move     {from, to}                -> res {}

and, in ``fsquery``: ``fs.du``, ``fs.search``, ``fs.headtail``; in ``archive``: ``fs.compress``,
``fs.extract``; in ``watch``: ``fs.watch``. Each module is imported on its first op.
"""

from __future__ import annotations

import os
import posixpath
import stat

from .args import bad, opt_int
from .fsutil import check, ndjson_batches, norm_path, run
from .protocol import BAD_REQUEST, IO_ERROR, OpError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Tuple

    from .context import AgentContext
    from .fsutil import Args, Reply
    from .stream import Stream
    from .threads import Stop

# -- list, stat, mkdir, touch, chmod, delete -----------------------------------------------


MAX_LIST_ENTRIES = 50_000  # the server refuses longer listings; say so instead


def _list(stop: Stop, path: str) -> Tuple[int, List[bytes]]:
    items: List[Dict[str, Any]] = []
    with os.scandir(path) as entries:
        for entry in entries:
            check(stop)
            if len(items) >= MAX_LIST_ENTRIES:
                raise OpError(
                    BAD_REQUEST,
                    f"{path} has more than {MAX_LIST_ENTRIES} entries; list a subdirectory,"
                    " or use search",
                )
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # deleted while we listed
            full = posixpath.join(path, entry.name)
            item = {"name": entry.name, "path": full, "size": st.st_size}
            item.update(mode=st.st_mode, mtime=st.st_mtime)
            items.append(item)
    items.sort(key=lambda item: str(item["name"]))
    return len(items), ndjson_batches(items)


async def op_fs_list(ctx: AgentContext, stream: Stream, args: Args) -> Reply:
    path = norm_path(args)
    count, batches = await run("ls", path, _list, path)
    for batch in batches:
        await stream.send_data("items", batch)
    return {"count": count}


def file_type(mode: int) -> str:
    """``stat -c %F`` names (an empty regular file is still a "regular file" here)."""
    for test, name in (
        (stat.S_ISREG, "regular file"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISLNK, "symbolic link"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character special file"),
        (stat.S_ISBLK, "block special file"),
    ):
        if test(mode):
            return name
    return "unknown"


async def op_fs_stat(ctx: AgentContext, stream: Stream, args: Args) -> Reply:
    path = norm_path(args)
    st = await run("stat", path, lambda stop: os.lstat(path))
    return {
        "path": path,
        "size": st.st_size,
        "mode": st.st_mode,
        "mtime": int(st.st_mtime),
        "type": file_type(st.st_mode),
    }


async def op_fs_mkdir(ctx: AgentContext, stream: Stream, args: Args) -> Reply:
    path = norm_path(args)
    await run("mkdir", path, lambda stop: os.makedirs(path, exist_ok=True))
    return {}


def _touch(stop: Stop, path: str) -> None:
    os.makedirs(posixpath.dirname(path), exist_ok=True)
    if os.path.isdir(path):
        os.utime(path)
        return
    flags = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    fd = os.open(path, flags, 0o644)
    try:
        os.utime(fd)
    finally:
        os.close(fd)


async def op_fs_touch(ctx: AgentContext, stream: Stream, args: Args) -> Reply:
    path = norm_path(args)
    await run("touch", path, _touch, path)
    return {}


async def op_fs_chmod(ctx: AgentContext, stream: Stream, args: Args) -> Reply:
    path = norm_path(args)
    mode = opt_int(args, "mode", -1)
    if not 0 <= mode <= 0o7777:
        raise bad("'mode' must be an integer from 0 to 0o7777")
    await run("chmod", path, lambda stop: os.chmod(path, mode))
    return {}


def _delete(stop: Stop, path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return  # rm -f: nothing to do is success
    if stat.S_ISDIR(st.st_mode):
        import shutil

        shutil.rmtree(path)
    else:
        os.unlink(path)


async def op_fs_delete(ctx: AgentContext, stream: Stream, args: Args) -> Reply:
    path = norm_path(args)
    if path == "/":
        raise OpError(IO_ERROR, "rm: it is dangerous to operate recursively on '/'")
    await run("rm", path, _delete, path)
    return {}


# -- copy, move ----------------------------------------------------------------------------


def _target(src: str, dst: str) -> str:
    """``cp``/``mv`` semantics: an existing directory as target means "into it"."""
    if os.path.isdir(dst):
        return posixpath.join(dst, posixpath.basename(src))
    os.makedirs(posixpath.dirname(dst), exist_ok=True)
    return dst


def _inside(child: str, parent: str) -> bool:
    child, parent = os.path.realpath(child), os.path.realpath(parent)
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def _copy(stop: Stop, src: str, dst: str) -> None:
    import shutil

    st = os.lstat(src)
    dst = _target(src, dst)
    if stat.S_ISDIR(st.st_mode):
        if _inside(dst, src):
            raise shutil.Error(f"cannot copy a directory, '{src}', into itself, '{dst}'")

        def ignore(directory: str, names: List[str]) -> List[str]:
            check(stop)
            return []

        shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True, ignore=ignore)
    elif stat.S_ISLNK(st.st_mode):
        if os.path.lexists(dst) and not os.path.isdir(dst):
            os.unlink(dst)
        os.symlink(os.readlink(src), dst)
    else:
        shutil.copy(src, dst)  # data and permission bits, like cp


async def op_fs_copy(ctx: AgentContext, stream: Stream, args: Args) -> Reply:
    src, dst = norm_path(args, "from"), norm_path(args, "to")
    await run("cp", src, _copy, src, dst)
    return {}


def _move(stop: Stop, src: str, dst: str) -> None:
    import shutil

    os.lstat(src)  # a missing source must name the source, not the target
    dst = _target(src, dst)
    if os.path.isdir(src) and not os.path.islink(src) and _inside(dst, src) and dst != src:
        raise shutil.Error(f"cannot move '{src}' to a subdirectory of itself, '{dst}'")
    shutil.move(src, dst)


async def op_fs_move(ctx: AgentContext, stream: Stream, args: Args) -> Reply:
    src, dst = norm_path(args, "from"), norm_path(args, "to")
    await run("mv", src, _move, src, dst)
    return {}
