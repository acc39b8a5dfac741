"""Parts of the microvm driver that need no QEMU: the QMP client against a scripted server,
and the initramfs writer against busybox's cpio."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from voidrun_server.drivers.base import DriverError, DriverTimeoutError
from voidrun_server.drivers.microvm.cpio import Entry, write_newc
from voidrun_server.drivers.microvm.qmp import QmpClient, QmpError


async def _qmp_server(path: Path, script: list[dict[str, object]]) -> asyncio.AbstractServer:
    """A QMP server that greets, then answers each command with the next scripted reply
    (``"silent"``: no answer), sending an event before every reply."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            greeting: dict[str, object] = {"QMP": {"version": {}, "capabilities": []}}
            writer.write(json.dumps(greeting).encode() + b"\n")
            for reply in script:
                request = json.loads(await reader.readline())
                if reply == {"silent": True}:
                    break  # never answers: the client's deadline must end the call
                event = {"event": "STOP", "data": {}, "timestamp": {}}
                answer = {**reply, "id": request["id"]}
                writer.write(
                    json.dumps(event).encode() + b"\n" + json.dumps(answer).encode() + b"\n"
                )
                await writer.drain()
            await reader.read()  # until the client hangs up
        finally:
            writer.close()

    return await asyncio.start_unix_server(serve, str(path))


async def test_qmp_handshake_commands_errors_events(tmp_path: Path) -> None:
    path = tmp_path / "qmp.sock"
    server = await _qmp_server(
        path,
        [
            {"return": {}},  # qmp_capabilities
            {"return": {"status": "running"}},
            {"error": {"class": "GenericError", "desc": "nope"}},
            {"silent": True},
        ],
    )
    async with server:
        client = await QmpClient.connect(path, owner_uid=os.geteuid(), within=5)
        async with client:
            assert await client.execute("query-status", within=5) == {"status": "running"}
            with pytest.raises(QmpError) as err:
                await client.execute("cont", within=5)
            assert "GenericError" in err.value.message
            assert (await client.wait_event("STOP", within=5))["event"] == "STOP"
            with pytest.raises(DriverTimeoutError):
                await client.execute("stop", within=0.2)
        await asyncio.sleep(0.05)  # the server's handler sees the hang-up and ends


async def test_qmp_refuses_a_socket_of_another_owner(tmp_path: Path) -> None:
    path = tmp_path / "qmp.sock"
    async with await _qmp_server(path, []):
        with pytest.raises(DriverError):
            await QmpClient.connect(path, owner_uid=os.geteuid() + 1, within=1)
        await asyncio.sleep(0.05)


def test_initramfs_archive_unpacks_with_busybox(tmp_path: Path) -> None:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox not installed")
    archive = tmp_path / "a.cpio.gz"
    entries = [
        Entry.directory("bin"),
        Entry.file("bin/tool", b"#!/bin/sh\necho hi\n", 0o755),
        Entry.file("odd", b"x" * 5),
        Entry.symlink("link", "bin/tool"),
    ]
    write_newc(archive, entries)
    out = tmp_path / "out"
    out.mkdir()
    data = subprocess.run(["gzip", "-dc", str(archive)], capture_output=True, check=True).stdout
    subprocess.run([busybox, "cpio", "-id"], input=data, cwd=out, check=True, capture_output=True)
    assert (out / "bin" / "tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert os.stat(out / "bin" / "tool").st_mode & 0o777 == 0o755
    assert (out / "odd").read_bytes() == b"xxxxx"
    assert os.readlink(out / "link") == "bin/tool"
    write_newc(tmp_path / "b.cpio.gz", entries)
    assert (tmp_path / "b.cpio.gz").read_bytes() == archive.read_bytes()  # reproducible
