"""``fs.watch``: inotify (through ctypes) turned into FileEvents, as a long-lived streamed op.

    fs.watch {path, recursive?, ignoreHidden?} -> head {} once the watches are in place, then
             data "events" (NDJSON FileEvents) until cancelled; res {} if the root disappears

FileEvent: ``{"type": created|modified|deleted|renamed|chmod, "path", "oldPath"?, "size"?,
"timestamp"}`` (spec names, CONTRACT §B.6). ``IN_MOVED_FROM``/``IN_MOVED_TO`` pairs with one
cookie become one ``renamed``; a move out of the tree is ``deleted``, a move in ``created``.
With ``recursive`` new subdirectories are watched as they appear, and what they already hold
when the watch lands is reported as ``created`` (closing the mkdir-then-write race; an entry
may then be reported twice). ``ignoreHidden`` drops everything under a dot-name.

Buffering policy, end to end: the event loop only reads the inotify fd and queues raw events
(at most ``RAW_MAX``); translation (path maps, new-directory scans, sizes) runs in a worker
thread; translated events wait for flow-control credit. When the consumer is slow, credit
runs out, the raw queue fills, the agent stops reading the fd and the kernel's own queue
(``max_queued_events``) absorbs the rest — past that the kernel drops events (IN_Q_OVERFLOW),
which we count and log. Memory stays bounded at every hop; repeated ``modified`` events for
one path within a batch are coalesced into one.
"""

from __future__ import annotations

import os
import posixpath
import stat
import time

from . import log
from .fdio import Fd, Reader
from .fsutil import norm_path, run
from .inotify import (
    IN_ATTRIB,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_ISDIR,
    IN_MODIFY,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
    Inotify,
    parse_events,
)
from .jsonc import dumps
from .sync import Event

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections import deque
    from typing import Deque, Dict, List, Optional, Tuple

    from .context import AgentContext
    from .fsutil import Args, Reply
    from .stream import Stream
    from .threads import Stop

    Raw = Tuple[int, int, int, str, str]  # wd, mask, cookie, name, timestamp
else:
    from _collections import deque

RAW_MAX = 8192
READ_SIZE = 64 * 1024
MOVE_WINDOW = 0.05  # how long a MOVED_FROM waits for its MOVED_TO


def now_rfc3339() -> str:
    """UTC with microseconds and ``Z`` (no ``datetime`` import: agent start-up time matters)."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


class Watcher:
    def __init__(self, root: str, recursive: bool, ignore_hidden: bool) -> None:
        self.root, self.recursive, self.ignore_hidden = root, recursive, ignore_hidden
        self.inotify: Optional[Inotify] = None
        self.paths: Dict[int, str] = {}  # wd -> watched path; touched by translate threads only
        self.root_wd = -1
        self.raw: Deque[Raw] = deque()
        self.readable = Event()
        self.reader: Optional[Reader] = None
        self.moves: Dict[int, Tuple[str, bool]] = {}  # cookie -> (old path, is dir)
        self.done = False
        self.overflows = 0

    # -- watches (worker threads) -------------------------------------------------------------

    def start(self, stop: Stop) -> None:
        self.inotify = Inotify()
        self.root_wd = self.inotify.add(self.root)
        self.paths[self.root_wd] = self.root
        if self.recursive and os.path.isdir(self.root):
            self._add_tree(self.root, None, watch_self=False)

    def hidden(self, path: str) -> bool:
        if not self.ignore_hidden or path == self.root:
            return False
        rel = path[len(self.root) :] if path.startswith(self.root) else path
        return any(part.startswith(".") for part in rel.split("/"))

    def _add_tree(self, path: str, out: Optional[List[Reply]], watch_self: bool = True) -> None:
        """Watch ``path`` and its subdirectories; report what they already hold into ``out``."""
        assert self.inotify is not None
        if watch_self:
            try:
                self.paths[self.inotify.add(path)] = path
            except OSError as exc:
                log.warning("watch: cannot watch %s: %s", path, exc)
                return
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if self.hidden(entry.path):
                continue
            is_dir = entry.is_dir(follow_symlinks=False)
            if out is not None:
                out.append(self._event("created", entry.path, "", is_dir))
            if is_dir:
                self._add_tree(entry.path, out)

    def _forget_tree(self, prefix: str) -> None:
        assert self.inotify is not None
        for wd, path in list(self.paths.items()):
            if path == prefix or path.startswith(prefix + "/"):
                self.inotify.remove(wd)
                del self.paths[wd]

    def _rename_tree(self, old: str, new: str) -> None:
        for wd, path in list(self.paths.items()):
            if path == old or path.startswith(old + "/"):
                self.paths[wd] = new + path[len(old) :]

    def _event(self, kind: str, path: str, stamp: str, is_dir: bool, old: str = "") -> Reply:
        event: Reply = {"type": kind, "path": path}
        if old:
            event["oldPath"] = old
        if kind in ("created", "modified", "renamed") and not is_dir:
            try:
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode):
                    event["size"] = st.st_size
            except OSError:
                pass
        event["timestamp"] = stamp or now_rfc3339()
        return event

    def translate(self, stop: Stop, batch: List[Raw], flush: bool) -> bytes:
        """Raw events -> FileEvents. The kernel queues a rename's MOVED_FROM and MOVED_TO back
        to back, so a MOVED_FROM followed by anything else was a move out of the tree: it is
        reported as ``deleted`` right there, keeping events in order. Only a MOVED_FROM that
        ends a batch waits (``MOVE_WINDOW``) for its partner."""
        out: List[Reply] = []
        for wd, mask, cookie, name, stamp in batch:
            if self.moves and not (mask & IN_MOVED_TO and cookie in self.moves):
                self._moved_out(out)
            self._one(out, wd, mask, cookie, name, stamp)
        if flush:
            self._moved_out(out)
        return "".join(dumps(e) + "\n" for e in _coalesce(out)).encode()

    def _moved_out(self, out: List[Reply]) -> None:
        for old, is_dir in self.moves.values():
            if is_dir:
                self._forget_tree(old)
            if not self.hidden(old):
                out.append(self._event("deleted", old, "", is_dir))
        self.moves.clear()

    def _one(self, out: List[Reply], wd: int, mask: int, cookie: int, name: str, ts: str) -> None:
        if mask & IN_Q_OVERFLOW:
            self.overflows += 1
            log.warning("watch %s: the kernel event queue overflowed; events lost", self.root)
            return
        base = self.paths.get(wd)
        if base is None:
            return
        if mask & IN_IGNORED:
            del self.paths[wd]
            self.done = self.done or wd == self.root_wd
            return
        path = posixpath.join(base, name) if name else base
        is_dir = bool(mask & IN_ISDIR)
        if mask & IN_MOVED_FROM:
            self.moves[cookie] = (path, is_dir)
            return
        if mask & IN_MOVED_TO:
            self._moved_in(out, path, is_dir, ts, self.moves.pop(cookie, None))
            return
        if self.hidden(path) or (mask & IN_MOVE_SELF):
            return
        if mask & IN_CREATE:
            out.append(self._event("created", path, ts, is_dir))
            if is_dir and self.recursive:
                self._add_tree(path, out)
        elif mask & IN_MODIFY:
            out.append(self._event("modified", path, ts, is_dir))
        elif mask & IN_ATTRIB:
            out.append(self._event("chmod", path, ts, is_dir))
        elif mask & IN_DELETE or (mask & IN_DELETE_SELF and wd == self.root_wd):
            out.append(self._event("deleted", path, ts, is_dir))

    def _moved_in(
        self, out: List[Reply], path: str, is_dir: bool, ts: str, src: Optional[Tuple[str, bool]]
    ) -> None:
        old = src[0] if src else ""
        if old and is_dir:
            self._rename_tree(old, path)
        old_visible = bool(old) and not self.hidden(old)
        if self.hidden(path):
            if old_visible:
                out.append(self._event("deleted", old, ts, is_dir))
            return
        if old_visible:
            out.append(self._event("renamed", path, ts, is_dir, old))
        else:
            out.append(self._event("created", path, ts, is_dir))
            if is_dir and self.recursive:
                self._add_tree(path, out)

    # -- event loop side ------------------------------------------------------------------------

    def listen(self) -> None:
        assert self.inotify is not None
        self.reader = Reader(Fd(self.inotify.fd), self.on_data, self.on_eof, READ_SIZE)

    def on_data(self, data: bytes) -> None:
        assert self.reader is not None
        stamp = now_rfc3339()
        for wd, mask, cookie, name in parse_events(data):
            self.raw.append((wd, mask, cookie, name, stamp))
        if len(self.raw) >= RAW_MAX:
            self.reader.pause()  # the kernel queues now
        self.readable.set()

    def on_eof(self) -> None:
        self.readable.set()  # never for inotify; a read error ends reading (see fdio.Reader)

    async def pump(self, stream: Stream) -> None:
        assert self.reader is not None
        while not self.done:
            flush = False
            if not self.raw:
                self.readable.clear()
                if not self.moves:
                    await self.readable.wait()
                    continue
                if await self.readable.wait(MOVE_WINDOW):
                    continue
                flush = True
            batch = list(self.raw)
            self.raw.clear()
            self.reader.resume()
            ndjson = await run("watch", self.root, self.translate, batch, flush)
            if ndjson:
                await stream.send_data("events", ndjson)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.fd.close()
        elif self.inotify is not None:
            os.close(self.inotify.fd)
        self.inotify = None


def _coalesce(events: List[Reply]) -> List[Reply]:
    """Drop a ``modified`` that repeats the previous event's path (keeping the newer one)."""
    out: List[Reply] = []
    for event in events:
        prev = out[-1] if out else None
        if prev and event["type"] == "modified" == prev["type"] and prev["path"] == event["path"]:
            out[-1] = event
        else:
            out.append(event)
    return out


async def op_fs_watch(ctx: AgentContext, stream: Stream, args: Args) -> Reply:
    root = norm_path(args)
    watcher = Watcher(root, args.get("recursive") is True, args.get("ignoreHidden") is not False)
    try:
        await run("watch", root, watcher.start)
        watcher.listen()
        await stream.send_head({})
        await watcher.pump(stream)
        return {}
    finally:
        watcher.close()
