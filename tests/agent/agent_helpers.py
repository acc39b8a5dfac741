"""Helpers shared by the agent tests: process inspection and raw protocol access."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.abc

from voidrun_server.agent.protocol import (
    PREFIX,
    PROTOCOL_VERSION,
    Header,
    encode_frame,
    parse_header,
    parse_prefix,
)
from voidrun_server.agent_launch import AGENT_PACKAGE_DIR, PACKAGE_NAME

# -- process inspection ---------------------------------------------------------------------


def copy_agent(mount: Path) -> Path:
    mount.mkdir(parents=True, exist_ok=True)
    shutil.copytree(
        AGENT_PACKAGE_DIR, mount / PACKAGE_NAME, ignore=shutil.ignore_patterns("__pycache__")
    )
    return mount


class AgentProcess:
    def __init__(self, proc: subprocess.Popen[bytes], socket: Path, log: Path) -> None:
        self.proc = proc
        self.socket = socket
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def terminate(self) -> int:
        """SIGTERM and wait; returns the exit code (kills and fails if it does not stop)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"agent ignored SIGTERM; log:\n{self.log.read_text()}") from None


AgentFactory = Callable[..., AgentProcess]


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of a process, or None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def is_running(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def live_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = proc_stat(int(entry))
            if stat is not None and stat[2] == pgid and stat[0] != "Z":
                members.append(int(entry))
    return members


async def eventually(check: Callable[[], bool], what: str, limit: float = 15.0) -> None:
    """Poll until ``check()`` holds. ``limit`` only bounds a failing test; it asserts nothing
    about speed."""
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting until {what}")
        await anyio.sleep(0.02)


# -- raw protocol access --------------------------------------------------------------------


class RawConnection:
    """Speaks frames directly, to send what the real client never would."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    @classmethod
    async def open(cls, socket: Path, hello: bool = True) -> RawConnection:
        with anyio.fail_after(15):
            while True:
                try:
                    conn = cls(await anyio.connect_unix(socket))
                    break
                except OSError:
                    await anyio.sleep(0.02)
        if hello:
            await conn.send({"t": "hello", "id": 0, "version": PROTOCOL_VERSION})
            assert (await conn.recv())[0]["t"] == "hello"
        return conn

    async def send(self, header: Header, payload: bytes = b"") -> None:
        await self.stream.send(encode_frame(header, payload))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send(data)

    async def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += await self.stream.receive()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def recv(self) -> tuple[Header, bytes]:
        with anyio.fail_after(15):
            hlen, plen = parse_prefix(await self._exactly(PREFIX.size))
            body = await self._exactly(hlen + plen)
        return parse_header(body[:hlen]), body[hlen:]

    async def recv_until_closed(self) -> list[Header]:
        """Frames received until the agent closes the connection."""
        frames = []
        with anyio.fail_after(15):
            try:
                while True:
                    frames.append((await self.recv())[0])
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return frames

    async def aclose(self) -> None:
        await self.stream.aclose()


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())
