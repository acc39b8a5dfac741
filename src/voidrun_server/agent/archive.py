"""``fs.compress`` and ``fs.extract``: tar, tar.gz, tar.bz2 and zip with the stdlib.

Ops (``req`` args -> reply)::

    fs.compress {path, format}   -> res {archive}    (written next to ``path`` as <path>.<format>)
    fs.extract  {archive, dest}  -> res {entries, problems, problemCount}

``compress`` stores ``basename(path)`` as the archive's top entry (``tar -C dirname basename``),
keeps symlinks as symlinks (also in zip, like ``zip -y``) and writes a temp file that is renamed
into place, so a failed or cancelled run never leaves half an archive. ``extract`` is in
``extract``: entries that would land outside ``dest`` are refused one by one and reported; the
rest is extracted (GNU tar's behaviour: exit status 2 with messages).

``tarfile``/``zipfile`` are imported on first use: they are a visible part of agent start-up.
"""

from __future__ import annotations

import os
import posixpath
import stat
import tempfile
import time

from .args import req_str
from .fsutil import check, norm_path, run
from .protocol import BAD_REQUEST, IO_ERROR, OpError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any, Iterator, List, Optional, Tuple

    from .context import AgentContext
    from .fsutil import Args, Reply
    from .stream import Stream
    from .threads import Stop

TAR_MODES = {"tar": "w:", "tar.gz": "w:gz", "tar.bz2": "w:bz2"}
FORMATS = (*TAR_MODES, "zip")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")
MAX_PROBLEMS = 100


def archive_kind(name: str) -> Optional[str]:
    """``"zip"``, ``"tar"`` (any compression; tarfile detects it) or None, by extension."""
    lower = name.lower()
    if lower.endswith(".zip"):
        return "zip"
    if lower.endswith(TAR_SUFFIXES):
        return "tar"
    return None


def walk(path: str, arcname: str) -> Iterator[Tuple[str, str, os.stat_result]]:
    """(path, name in archive, lstat) for ``path`` and everything under it, in name order;
    symlinks are entries, never followed."""
    st = os.lstat(path)
    yield path, arcname, st
    if stat.S_ISDIR(st.st_mode):
        with os.scandir(path) as it:
            names = sorted(entry.name for entry in it)
        for name in names:
            yield from walk(posixpath.join(path, name), arcname + "/" + name)


def _write_zip(stop: Stop, out: IO[bytes], path: str, base: str) -> None:
    import zipfile

    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, strict_timestamps=False) as zf:
        for full, name, st in walk(path, base):
            check(stop)
            if stat.S_ISLNK(st.st_mode):
                info = zipfile.ZipInfo(name, time.localtime(st.st_mtime)[:6])
                info.create_system = 3  # unix: external_attr carries st_mode
                info.external_attr = (st.st_mode & 0xFFFF) << 16
                zf.writestr(info, os.fsencode(os.readlink(full)))
            elif stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
                zf.write(full, name)
            # sockets, fifos and devices have no meaning in a zip: skipped, like zip does


def _write_tar(stop: Stop, out: IO[bytes], path: str, base: str, fmt: str) -> None:
    import tarfile

    def keep(info: Any) -> Any:
        check(stop)
        return info

    with tarfile.open(fileobj=out, mode=TAR_MODES[fmt]) as tar:  # type: ignore[call-overload]
        tar.add(path, arcname=base, filter=keep)


def _compress(stop: Stop, path: str, fmt: str) -> str:
    os.lstat(path)  # a missing source is reported as such, not as a temp-file error
    parent, base = posixpath.split(path)
    archive = f"{path}.{fmt}"
    fd, tmp = tempfile.mkstemp(prefix=f".{base[:100]}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as out:
            if fmt == "zip":
                _write_zip(stop, out, path, base)
            else:
                _write_tar(stop, out, path, base, fmt)
            out.flush()
            os.fchmod(out.fileno(), 0o644)
            os.fsync(out.fileno())
        os.rename(tmp, archive)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return archive


async def op_fs_compress(ctx: AgentContext, stream: Stream, args: Args) -> Reply:
    path = norm_path(args)
    fmt = req_str(args, "format")
    if fmt not in FORMATS:
        raise OpError(BAD_REQUEST, f"unsupported format {fmt!r}; use one of {', '.join(FORMATS)}")
    if path == "/":
        raise OpError(IO_ERROR, "tar: refusing to archive the whole file system '/'")
    tool = "zip" if fmt == "zip" else "tar"
    return {"archive": await run(tool, path, _compress, path, fmt)}


async def op_fs_extract(ctx: AgentContext, stream: Stream, args: Args) -> Reply:
    from .extract import extract

    archive = norm_path(args, "archive")
    dest = norm_path(args, "dest")
    kind = archive_kind(archive)
    if kind is None:
        raise OpError(BAD_REQUEST, f"unsupported archive type: {archive!r}")
    tool = "unzip" if kind == "zip" else "tar"
    count, problems = await run(tool, archive, extract, archive, dest, kind)
    messages: List[str] = [f"{tool}: {p}" for p in problems[:MAX_PROBLEMS]]
    return {"entries": count, "problems": messages, "problemCount": len(problems)}
