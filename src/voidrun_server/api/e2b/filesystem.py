"""``filesystem.Filesystem`` on the wire (``services/e2b_files.py`` does the work)."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator

from ...services.e2b_files import Entry, Event
from .calls import Call, Rpc
from .connect import Message
from .protojson import In, parse, timestamp

FILE_TYPES = {
    "file": "FILE_TYPE_FILE",
    "dir": "FILE_TYPE_DIRECTORY",
    "symlink": "FILE_TYPE_SYMLINK",
}
EVENT_TYPES = {
    "create": "EVENT_TYPE_CREATE",
    "write": "EVENT_TYPE_WRITE",
    "remove": "EVENT_TYPE_REMOVE",
    "rename": "EVENT_TYPE_RENAME",
    "chmod": "EVENT_TYPE_CHMOD",
}
KEEPALIVE: Message = {"keepalive": {}}


class PathRequest(In):
    path: str


class MoveRequest(In):
    source: str
    destination: str


class ListRequest(In):
    path: str
    depth: int = 0


class WatchRequest(In):
    path: str
    recursive: bool = False


class WatcherRequest(In):
    watcher_id: str


def entry_info(entry: Entry) -> Message:
    info: Message = {
        "name": entry.name,
        "type": FILE_TYPES.get(entry.kind, "FILE_TYPE_UNSPECIFIED"),
        "path": entry.path,
        "size": str(entry.size),
        "mode": entry.mode & 0o7777,
        "permissions": stat.filemode(entry.mode) if entry.mode else "",
        "owner": "",
        "group": "",
        "modifiedTime": timestamp(entry.mtime),
    }
    if entry.kind == "symlink":
        info["isSymlink"] = True
    return info


def event_info(event: Event) -> Message:
    return {"name": event.name, "type": EVENT_TYPES[event.kind]}


async def _path(call: Call, path: str) -> str:
    return await call.files.absolute(call.caller, call.sandbox_id, path, call.user)


async def stat_entry(call: Call, message: Message) -> Message:
    path = await _path(call, parse(PathRequest, message).path)
    return {"entry": entry_info(await call.files.stat(call.caller, call.sandbox_id, path))}


async def make_dir(call: Call, message: Message) -> Message:
    path = await _path(call, parse(PathRequest, message).path)
    return {"entry": entry_info(await call.files.make_dir(call.caller, call.sandbox_id, path))}


async def move(call: Call, message: Message) -> Message:
    request = parse(MoveRequest, message)
    source, target = await _path(call, request.source), await _path(call, request.destination)
    moved = await call.files.move(call.caller, call.sandbox_id, source, target)
    return {"entry": entry_info(moved)}


async def remove(call: Call, message: Message) -> Message:
    path = await _path(call, parse(PathRequest, message).path)
    await call.files.remove(call.caller, call.sandbox_id, path)
    return {}


async def list_dir(call: Call, message: Message) -> Message:
    request = parse(ListRequest, message)
    path = await _path(call, request.path)
    found = await call.files.list_dir(call.caller, call.sandbox_id, path, request.depth or 1)
    return {"entries": [entry_info(e) for e in found]}


async def watch_dir(call: Call, message: Message) -> AsyncIterator[Message]:
    request = parse(WatchRequest, message)
    path = await _path(call, request.path)
    async with call.files.watch(call.caller, call.sandbox_id, path, request.recursive) as events:
        yield {"start": {}}
        async for event in events:
            yield {"filesystem": event_info(event)}


async def create_watcher(call: Call, message: Message) -> Message:
    request = parse(WatchRequest, message)
    path = await _path(call, request.path)
    watcher = await call.files.create_watcher(call.caller, call.sandbox_id, path, request.recursive)
    return {"watcherId": watcher}


async def watcher_events(call: Call, message: Message) -> Message:
    watcher = parse(WatcherRequest, message).watcher_id
    events = call.files.watcher_events(call.caller, call.sandbox_id, watcher)
    return {"events": [event_info(e) for e in events]}


async def remove_watcher(call: Call, message: Message) -> Message:
    watcher = parse(WatcherRequest, message).watcher_id
    call.files.remove_watcher(call.caller, call.sandbox_id, watcher)
    return {}


RPCS: dict[str, Rpc] = {
    "Stat": Rpc.unary(stat_entry),
    "MakeDir": Rpc.unary(make_dir),
    "Move": Rpc.unary(move),
    "ListDir": Rpc.unary(list_dir),
    "Remove": Rpc.unary(remove),
    "WatchDir": Rpc.stream(watch_dir, KEEPALIVE),
    "CreateWatcher": Rpc.unary(create_watcher),
    "GetWatcherEvents": Rpc.unary(watcher_events),
    "RemoveWatcher": Rpc.unary(remove_watcher),
}
