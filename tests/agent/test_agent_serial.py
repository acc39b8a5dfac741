"""The agent serving a character device (``--serial``), as it does on a microVM's
virtio-serial port: one byte stream, one host session at a time.

A pty stands in for the port (the agent sets it raw). A bridge thread joins the pty's master to
a Unix socket, one client at a time, so the real ``AgentClient`` talks to it. A pty never
reports the host going away, so every reconnect here is the hard case: the agent learns of the
new session only from its hello (``Connection(rehello=True)``).
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from voidrun_server.agent.__main__ import parse_args
from voidrun_server.agent_launch import bootstrap_code
from voidrun_server.agentclient import AgentClient


class Bridge:
    """Accepts clients on ``path`` one after another and pumps bytes to and from ``master``."""

    def __init__(self, path: Path, master: int) -> None:
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen(4)
        self.master = master
        self.stop_r, self.stop_w = os.pipe()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            ready, _, _ = select.select([self.listener.fileno(), self.stop_r], [], [])
            if self.stop_r in ready:
                return
            conn, _ = self.listener.accept()
            with conn:
                self._pump(conn)

    def _pump(self, conn: socket.socket) -> None:
        while True:
            ready, _, _ = select.select([conn.fileno(), self.master, self.stop_r], [], [])
            if self.stop_r in ready:
                return
            if conn.fileno() in ready:
                data = conn.recv(65536)
                if not data:
                    return  # this client left; the pty (the port) stays
                os.write(self.master, data)
            if self.master in ready:
                try:
                    conn.sendall(os.read(self.master, 65536))
                except OSError:
                    return

    def close(self) -> None:
        os.write(self.stop_w, b".")
        self.thread.join(timeout=10)
        self.listener.close()
        os.close(self.stop_r)
        os.close(self.stop_w)


@pytest.fixture
def serial_agent(agent_mount: Path, tmp_path: Path) -> Iterator[Path]:
    """An agent on a pty's slave; yields the Unix socket that reaches its master."""
    master, slave = os.openpty()
    device = os.ttyname(slave)
    os.close(slave)  # the agent opens it by name, as it opens /dev/vport0p1
    argv = [sys.executable, "-I", "-S", "-c", bootstrap_code(str(agent_mount))]
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*argv, "--serial", device], stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    # until the agent has made the pty raw, its line discipline would echo our bytes back
    deadline = time.monotonic() + 30
    while termios.tcgetattr(master)[3] & termios.ECHO:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.01)
    bridge = Bridge(tmp_path / "port.sock", master)
    try:
        yield tmp_path / "port.sock"
    finally:
        proc.terminate()
        code = proc.wait(timeout=20)
        bridge.close()
        os.close(master)
        assert code == 0, log.read_text()


async def test_serial_sessions_one_after_another(serial_agent: Path) -> None:
    for i in range(3):  # each client is a new session on the same byte stream
        async with AgentClient(serial_agent, connect_timeout=30) as agent:
            result = await agent.exec(f"echo session-{i}; tty -s && echo tty || echo notty")
            assert (result.exit_code, result.stdout_text) == (0, f"session-{i}\nnotty\n")


async def test_a_session_left_mid_command_does_not_leak_into_the_next(
    serial_agent: Path,
) -> None:
    async with AgentClient(serial_agent, connect_timeout=30) as agent:
        await agent.exec("echo warm")
        # leave while a command still prints: its output must not reach the next client
        with pytest.raises(TimeoutError), anyio.fail_after(0.5):
            await agent.exec("while :; do echo noise; sleep 0.01; done", timeout=30)
    async with AgentClient(serial_agent, connect_timeout=30) as agent:
        result = await agent.exec("echo clean")
        assert (result.exit_code, result.stdout_text) == (0, "clean\n")


def test_parse_args_serial() -> None:
    assert parse_args(["--serial", "/dev/vport0p1"]) == ("/dev/vport0p1", None, True, None)
    assert parse_args(["--socket", "/run/a.sock", "--env-file", "e"]) == (
        "/run/a.sock",
        "e",
        False,
        None,
    )
    assert parse_args(["--serial", "/dev/vport0p1", "--control", "/dev/vport0p2"]) == (
        "/dev/vport0p1",
        None,
        True,
        "/dev/vport0p2",
    )
    for bad in ([], ["--socket", "a", "--serial", "b"], ["--socket", "a", "--control", "b"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
