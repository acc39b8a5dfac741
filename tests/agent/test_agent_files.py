"""file.read / file.write through the real client."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from tests.agent.agent_helpers import AgentProcess, eventually, names
from voidrun_server.agent.protocol import MAX_CONCURRENT_REQUESTS
from voidrun_server.agentclient import AgentClient, AgentOperationError

MiB = 1024 * 1024


async def test_fifty_megabyte_round_trip(agent: AgentProcess, tmp_path: Path) -> None:
    blob = os.urandom(50 * MiB)
    target = tmp_path / "deep" / "er" / "blob.bin"

    async def chunks() -> AsyncIterator[bytes]:
        for offset in range(0, len(blob), 3 * MiB + 7):  # sizes unrelated to frame sizes
            yield blob[offset : offset + 3 * MiB + 7]

    async with AgentClient(agent.socket) as client:
        assert await client.write_file(str(target), chunks()) == len(blob)
        assert target.read_bytes() == blob  # parent directories were created
        digest = hashlib.sha256()
        async with client.read_file(str(target)) as download:
            assert download.size == len(blob)
            async for chunk in download:
                digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(blob).hexdigest()


async def test_write_bytes_mode_and_overwrite(agent: AgentProcess, tmp_path: Path) -> None:
    target = tmp_path / "script.sh"
    target.write_text("old")
    async with AgentClient(agent.socket) as client:
        assert await client.write_file(str(target), b"#!/bin/sh\necho hi\n", mode=0o750) == 18
        assert await client.write_file(str(tmp_path / "empty"), b"") == 0
        assert await client.read_bytes(str(target)) == b"#!/bin/sh\necho hi\n"
        assert await client.read_bytes(str(tmp_path / "empty")) == b""
    assert stat.S_IMODE(target.stat().st_mode) == 0o750
    assert names(tmp_path) == ["empty", "script.sh"]


async def test_write_without_fsync_is_still_whole(agent: AgentProcess, tmp_path: Path) -> None:
    """``durable=False`` (identity files rewritten on every start) skips the fsyncs only: the
    file is replaced whole, and anything but a boolean is refused."""
    target = tmp_path / "hosts"
    target.write_text("old")
    async with AgentClient(agent.socket) as client:
        assert await client.write_file(str(target), b"127.0.0.1 me\n", durable=False) == 13
        assert await client.read_bytes(str(target)) == b"127.0.0.1 me\n"
        with pytest.raises(AgentOperationError) as info:  # refused before any data is read
            await client._call("file.write", {"path": str(target), "durable": "no"})
        assert info.value.code == "bad_request" and "durable" in str(info.value)
    assert names(tmp_path) == ["hosts"] and target.read_bytes() == b"127.0.0.1 me\n"


@pytest.mark.parametrize(
    ("setup", "code"),
    [("missing", "not_found"), ("directory", "is_a_directory"), ("under_file", "not_a_directory")],
)
async def test_read_errors(agent: AgentProcess, tmp_path: Path, setup: str, code: str) -> None:
    (tmp_path / "directory").mkdir()
    (tmp_path / "file").write_text("x")
    path = {"missing": "missing", "directory": "directory", "under_file": "file/child"}[setup]
    async with AgentClient(agent.socket) as client:
        with pytest.raises(AgentOperationError) as info:
            await client.read_bytes(str(tmp_path / path))
        assert info.value.code == code
        await client.ping()


async def test_write_errors(agent: AgentProcess, tmp_path: Path) -> None:
    (tmp_path / "directory").mkdir()
    (tmp_path / "file").write_text("x")
    async with AgentClient(agent.socket) as client:
        with pytest.raises(AgentOperationError) as info:
            await client.write_file(str(tmp_path / "directory"), b"data")
        assert info.value.code == "is_a_directory"
        with pytest.raises(AgentOperationError) as info:
            await client.write_file(str(tmp_path / "file" / "child"), b"data")
        assert info.value.code == "not_a_directory"
        with pytest.raises(AgentOperationError) as info:
            await client.write_file("relative.txt", b"data")
        assert info.value.code == "bad_request"
    assert names(tmp_path) == ["directory", "file"]


async def test_failed_upload_leaves_no_trace(agent: AgentProcess, tmp_path: Path) -> None:
    target = tmp_path / "out" / "file.bin"
    target.parent.mkdir()
    (target.parent / "keep").write_text("keep")

    async def broken() -> AsyncIterator[bytes]:
        yield os.urandom(3 * MiB)
        raise RuntimeError("source failed")

    async with AgentClient(agent.socket) as client:
        with pytest.raises(RuntimeError, match="source failed"):
            await client.write_file(str(target), broken())
        await eventually(
            lambda: names(target.parent) == ["keep"],
            "the agent removed its temp file",
        )
        await client.ping()


async def test_more_requests_than_the_connection_limit_wait_their_turn(
    agent: AgentProcess, tmp_path: Path
) -> None:
    count = MAX_CONCURRENT_REQUESTS + 50
    release = anyio.Event()
    active = peak = 0

    async def held_back(i: int) -> AsyncIterator[bytes]:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await release.wait()
        yield f"file {i}".encode()
        active -= 1

    async with AgentClient(agent.socket) as client:
        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(client.write_file, str(tmp_path / f"f{i}"), held_back(i))
            await eventually(lambda: active == MAX_CONCURRENT_REQUESTS, "the limit is reached")
            release.set()
        await client.ping()
    assert peak == MAX_CONCURRENT_REQUESTS
    assert len(names(tmp_path)) == count
    assert (tmp_path / f"f{count - 1}").read_bytes() == f"file {count - 1}".encode()
