"""Files through the E2B SDK: ``/files`` and ``filesystem.Filesystem``."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator

import pytest
from e2b import AsyncSandbox, FilesystemEventType, FileType, NotFoundException, Sandbox

from tests.support.server import ServerProcess


@pytest.fixture
def sandbox(e2b_env: ServerProcess) -> Iterator[Sandbox]:
    box = Sandbox.create()
    yield box
    box.kill()


def test_write_read_text_and_bytes(sandbox: Sandbox) -> None:
    info = sandbox.files.write("/tmp/e2b/a.txt", "hello")
    assert info.path == "/tmp/e2b/a.txt"
    assert info.type == FileType.FILE
    assert sandbox.files.read("/tmp/e2b/a.txt") == "hello"
    payload = bytes(range(256)) * 1000
    sandbox.files.write("/tmp/e2b/b.bin", io.BytesIO(payload))  # octet-stream, streamed
    assert sandbox.files.read("/tmp/e2b/b.bin", format="bytes") == payload
    streamed = b"".join(sandbox.files.read("/tmp/e2b/b.bin", format="stream"))
    assert streamed == payload


def test_write_many_files_in_one_multipart_request(sandbox: Sandbox) -> None:
    written = sandbox.files.write_files(
        [{"path": "/tmp/m/one.txt", "data": "1"}, {"path": "/tmp/m/two.txt", "data": b"2"}]
    )
    assert sorted(w.path for w in written) == ["/tmp/m/one.txt", "/tmp/m/two.txt"]
    assert sandbox.commands.run("cat /tmp/m/one.txt /tmp/m/two.txt").stdout == "12"


def test_relative_paths_are_in_the_users_home(sandbox: Sandbox) -> None:
    sandbox.files.write("notes.txt", "home")
    home = sandbox.commands.run("cd ~ && pwd").stdout.strip()
    assert sandbox.files.read(f"{home}/notes.txt") == "home"


def test_list_make_dir_rename_remove_exists(sandbox: Sandbox) -> None:
    assert sandbox.files.make_dir("/tmp/tree/sub") is True
    assert sandbox.files.make_dir("/tmp/tree/sub") is False  # already there
    sandbox.files.write("/tmp/tree/sub/deep.txt", "x")
    sandbox.files.write("/tmp/tree/top.txt", "abc")
    entries = {e.path: e for e in sandbox.files.list("/tmp/tree")}
    assert set(entries) == {"/tmp/tree/sub", "/tmp/tree/top.txt"}
    assert entries["/tmp/tree/sub"].type == FileType.DIR
    assert entries["/tmp/tree/top.txt"].size == 3
    deep = {e.path for e in sandbox.files.list("/tmp/tree", depth=2)}
    assert "/tmp/tree/sub/deep.txt" in deep
    moved = sandbox.files.rename("/tmp/tree/top.txt", "/tmp/tree/moved.txt")
    assert moved.path == "/tmp/tree/moved.txt"
    assert sandbox.files.exists("/tmp/tree/moved.txt")
    assert not sandbox.files.exists("/tmp/tree/top.txt")
    info = sandbox.files.get_info("/tmp/tree/moved.txt")
    assert info.size == 3 and info.type == FileType.FILE
    sandbox.files.remove("/tmp/tree")
    assert not sandbox.files.exists("/tmp/tree")


def test_missing_files_are_not_found(sandbox: Sandbox) -> None:
    with pytest.raises(NotFoundException):
        sandbox.files.read("/tmp/absent.txt")
    with pytest.raises(NotFoundException):
        sandbox.files.list("/tmp/absent-dir")
    with pytest.raises(NotFoundException):
        sandbox.files.get_info("/tmp/absent.txt")


def test_watch_dir_sync(sandbox: Sandbox) -> None:
    sandbox.files.make_dir("/tmp/watched")
    handle = sandbox.files.watch_dir("/tmp/watched")
    sandbox.files.write("/tmp/watched/new.txt", "data")
    seen: list[tuple[str, FilesystemEventType]] = []
    for _ in range(100):
        seen += [(e.name, e.type) for e in handle.get_new_events()]
        if ("new.txt", FilesystemEventType.CREATE) in seen:
            break
        sandbox.commands.run("sleep 0.1")
    handle.stop()
    assert ("new.txt", FilesystemEventType.CREATE) in seen


def test_watch_dir_async(e2b_env: ServerProcess) -> None:
    async def scenario() -> list[tuple[str, FilesystemEventType]]:
        box = await AsyncSandbox.create()
        try:
            await box.files.make_dir("/tmp/awatched")
            seen: list[tuple[str, FilesystemEventType]] = []
            created = asyncio.Event()

            def on_event(event: object) -> None:
                seen.append((event.name, event.type))  # type: ignore[attr-defined]
                if event.name == "a.txt" and event.type == FilesystemEventType.CREATE:  # type: ignore[attr-defined]
                    created.set()

            handle = await box.files.watch_dir("/tmp/awatched", on_event, recursive=True)
            await box.files.write("/tmp/awatched/a.txt", "1")
            await asyncio.wait_for(created.wait(), 60)
            await handle.stop()
            return seen
        finally:
            await box.kill()

    assert ("a.txt", FilesystemEventType.CREATE) in asyncio.run(scenario())


def test_gzip_upload(sandbox: Sandbox) -> None:
    payload = b"compressible " * 10000
    sandbox.files.write("/tmp/gz.txt", payload, gzip=True)
    assert sandbox.files.read("/tmp/gz.txt", format="bytes") == payload
