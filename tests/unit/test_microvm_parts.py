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


# -- snapshot templates (template.py, qemu.py) ----------------------------------------------


def test_template_ram_is_sealed_against_writes(tmp_path: Path) -> None:
    """Clones map the template's RAM privately; nobody may change the shared copy."""
    import mmap

    from voidrun_server.drivers.microvm.template import Template, TemplateStore

    root = tmp_path / "templates" / "k1"
    root.mkdir(parents=True)
    with open(root / "ram.img", "wb") as f:  # data, a hole, data: holes stay holes
        f.write(b"A" * 4096)
        f.seek(1 << 20)
        f.write(b"B" * 4096)
    (root / "state.bin").write_bytes(b"state")
    (root / "disk.img").write_bytes(b"disk")
    store = TemplateStore(tmp_path / "templates")
    template = store.find("k1")
    assert template == Template(root)
    memfd, state, disk = store.open(template)
    try:
        assert (os.read(state, 10), os.read(disk, 10)) == (b"state", b"disk")
        assert os.pread(memfd, 4, 0) == b"AAAA" and os.pread(memfd, 4, 1 << 20) == b"BBBB"
        assert os.pread(memfd, 4, 8192) == b"\0" * 4
        with pytest.raises(PermissionError):
            os.pwrite(memfd, b"x", 0)
        with pytest.raises(PermissionError):
            mmap.mmap(memfd, 8192, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        # what QEMU does: reopen read-write by path, map privately, write (copy-on-write)
        again = os.open(f"/proc/self/fd/{memfd}", os.O_RDWR)
        private = mmap.mmap(again, 8192, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
        private[0:4] = b"ZZZZ"
        assert os.pread(memfd, 4, 0) == b"AAAA"
        private.close()
        os.close(again)
        again_fds = store.open(template)
        assert again_fds[0] == memfd  # loaded once per template generation
        os.close(again_fds[1])
        os.close(again_fds[2])
    finally:
        os.close(state)
        os.close(disk)
        store.close()


def test_clone_argv_restores_instead_of_booting(tmp_path: Path) -> None:
    from voidrun_server.drivers.microvm.assets import GuestAssets
    from voidrun_server.drivers.microvm.qemu import VmConfig, qemu_argv

    files = {n: tmp_path / n for n in ("k", "i", "img", "agent", "data", "conf", "console")}
    config = VmConfig(
        accelerator="tcg",
        assets=GuestAssets(files["k"], files["i"], "6.1"),
        cpu=1,
        mem_mb=256,
        image_disk=files["img"],
        agent_disk=files["agent"],
        data_disk=files["data"],
        config_disk=files["conf"],
        agent_socket=Path("agent.sock"),
        control_socket=Path("control.sock"),
        qmp_socket=Path("qmp.sock"),
        console=files["console"],
    )
    cold = qemu_argv(config)
    assert "-kernel" in cold and "-incoming" not in cold and "tcg,tb-size=32" in cold
    clone = qemu_argv(
        VmConfig(**{**config.__dict__, "ram_file": Path("/proc/self/fd/7"), "incoming_fd": 8})
    )
    assert "-kernel" not in clone and clone[clone.index("-incoming") + 1] == "defer"
    backend = clone[clone.index("-object") + 1]
    assert "mem-path=/proc/self/fd/7" in backend and "share=off" in backend
    assert "microvm,pit=on,rtc=on,memory-backend=ram0" in clone
    # the devices are the template's: everything but the boot and RAM options is the same
    rest = [a for a in clone if a not in ("-incoming", "defer", "-object", backend)]
    assert [a.replace(",memory-backend=ram0", "") for a in rest] == [
        a
        for a in cold
        if a not in ("-kernel", "-initrd", "-append")
        and a not in (str(files["k"]), str(files["i"]), cold[cold.index("-append") + 1])
    ]


def test_template_key_follows_the_shape(tmp_path: Path) -> None:
    from voidrun_server.drivers.microvm.template import template_key

    image = tmp_path / "image.ext4"
    image.write_bytes(b"1")
    base = {"image": image, "cpu": 1, "mem_mb": 256, "disk_mb": 64}
    assert template_key(base) == template_key(dict(base))
    for change in ({"cpu": 2}, {"mem_mb": 512}, {"disk_mb": 128}):
        assert template_key({**base, **change}) != template_key(base)
    before = template_key(base)
    image.write_bytes(b"22")  # a rebuilt image disk is another template
    assert template_key(base) != before


def test_least_recently_used_templates_go_first(tmp_path: Path) -> None:
    from voidrun_server.drivers.microvm.template import KEEP_ON_DISK, TemplateStore

    store = TemplateStore(tmp_path)
    for i in range(KEEP_ON_DISK + 2):
        (tmp_path / f"k{i}").mkdir()
        (tmp_path / f"k{i}" / "state.bin").write_bytes(b"s")
        os.utime(tmp_path / f"k{i}", (1000 + i, 1000 + i))
    (tmp_path / "k0.build-1").mkdir()  # a build in progress is not a template
    assert store.find("k1") is not None  # used now: the most recent
    store._prune(keep=f"k{KEEP_ON_DISK + 1}")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len([n for n in left if "." not in n]) == KEEP_ON_DISK
    assert "k1" in left and "k0.build-1" in left
    assert "k0" not in left and "k2" not in left and "k3" in left
